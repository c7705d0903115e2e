"""``fastopt bench --mixed``: the offload loop end to end, not the step alone.

A bfloat16 ``torch.nn`` MLP :data:`SIZES` (5.3M parameters) trains on CPU on one fixed
batch of :data:`BATCH`, forward and backward in bf16, loss scaled by
:data:`~.mixed.LOSS_SCALE`. The optimizer side is an offload engine's: a float32 master
of all parameters in one flat buffer, float32 Adam state, a flat bf16 gradient buffer and
a flat bf16 copy buffer. Each iteration of :class:`OffloadLoop`:

1. ``zero_grad(set_to_none=True)``, forward, ``(loss * scale).backward()`` in bf16;
2. the bf16 gradients copied into the flat bf16 gradient buffer (on an accelerator, the
   device-to-host copy);
3. the step, one of :data:`CONFIGS`:

   * ``fastopt``: one :func:`fastopt.offload.adam_step` call (unscale, fp32 Adam step,
     bf16 copy, in one pass);
   * ``torch 3-pass``: unscale into an fp32 gradient, ``torch.optim.Adam(fused=True)`` on
     the fp32 master, cast the bf16 copy (:func:`.mixed.sequence`);
   * ``deepspeed 3-pass``: the same with ``DeepSpeedCPUAdam`` (when it runs here);
   * ``no step``: nothing (the loop's floor: forward, backward and both copies, the
     params unchanged);

4. the bf16 copy copied back into the model's parameters (the host-to-device copy).

Each configuration has its own model and buffers, all in one process, started from the
same weights; blocks of iterations alternate between them
(:func:`.loops.alternating_medians`), and each reports its median time per iteration.
"""

from . import cases, loops, measure, mixed

SIZES = (512, 2048, 2048, 10)
BATCH = 32
LR = 1e-4
HYPER = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
CONFIGS = ("fastopt", "torch 3-pass", "deepspeed 3-pass", "no step")


class OffloadLoop:
    """One configuration's model, batch and offload buffers; calling it runs one training
    iteration. ``step``: one of :data:`CONFIGS`. After a call, ``loss`` is that
    iteration's (unscaled) loss and the model's parameters are the bf16 copy of
    ``master`` (``no step`` leaves both as they started). Raises
    :class:`~.cases.Unavailable` without torch, or for ``deepspeed 3-pass`` without a
    working DeepSpeed."""

    def __init__(self, step="fastopt", sizes=None, batch=None, lr=LR,
                 loss_scale=mixed.LOSS_SCALE, seed=0):
        if step not in CONFIGS:
            raise ValueError(f"step: {step!r} is not one of {CONFIGS}")
        torch = cases.import_torch()
        sizes = SIZES if sizes is None else sizes
        batch = BATCH if batch is None else batch
        self.torch, self.config, self.lr, self.loss_scale = torch, step, lr, loss_scale
        torch.manual_seed(seed)
        layers = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1]).to(torch.bfloat16)
        self.params = list(self.model.parameters())
        generator = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn(batch, sizes[0], generator=generator).to(torch.bfloat16)
        self.y = torch.randint(0, sizes[-1], (batch,), generator=generator)
        numels = [p.numel() for p in self.params]
        with torch.no_grad():   # the bf16 params widened: exact
            self.master = torch.cat([p.detach().reshape(-1).float() for p in self.params])
        self.grad = torch.empty(self.master.numel(), dtype=torch.bfloat16)   # comes in
        self.copy = self.master.to(torch.bfloat16)   # goes back; the params, to start
        self.copies = [view.view(p.shape) for view, p in
                       zip(self.copy.split(numels), self.params)]
        self.t = 0
        self.loss = None
        self._step = self._make_step(step)

    @property
    def size(self):
        """Parameters trained (elements of the master)."""
        return self.master.numel()

    def _make_step(self, step):
        torch = self.torch
        if step == "fastopt":
            from ..offload import adam_step
            exp_avg, exp_avg_sq = torch.zeros_like(self.master), torch.zeros_like(self.master)

            def call():
                adam_step(self.master, self.grad, exp_avg, exp_avg_sq, step=self.t,
                          lr=self.lr, loss_scale=self.loss_scale, out=self.copy, **HYPER)
            return call
        if step == "no step":
            return lambda: None
        master = torch.nn.Parameter(self.master)   # shares the master's storage
        master.grad = torch.zeros_like(self.master)
        if step == "torch 3-pass":
            optimizer = torch.optim.Adam([master], lr=self.lr, fused=True, **HYPER)
        else:
            optimizer = mixed.deepspeed_optimizer([master], lr=self.lr, **HYPER)
        return mixed.sequence(optimizer, master, self.grad, self.copy, self.loss_scale)

    def __call__(self):
        torch = self.torch
        self.model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(self.x).float(), self.y)
        (loss * self.loss_scale).backward()
        with torch.no_grad():
            torch.cat([p.grad.reshape(-1) for p in self.params], out=self.grad)  # copy in
            self.t += 1
            self._step()
            for param, copy in zip(self.params, self.copies):   # copy back
                param.copy_(copy)
        self.loss = loss.detach()


def loop_row(threads, deepspeed=False, progress=None, rounds=None, block=None, warmup=None,
             **options):
    """Median seconds per iteration of each configuration at ``threads`` threads (Numba
    and torch; ``None``: as they are), in alternating blocks; fastopt's speed-up over each
    (its time over fastopt's) and each step's own share, its time less ``no step``'s.
    ``deepspeed``: add DeepSpeed's when it runs here. ``options``: :class:`OffloadLoop`'s."""
    import numba
    names = [name for name in CONFIGS
             if name != "deepspeed 3-pass" or (deepspeed and mixed.deepspeed_note() is None)]
    with measure.threads(threads):
        built = {name: OffloadLoop(name, **options) for name in names}
        seconds = loops.alternating_medians(built, rounds, block, warmup, progress=progress,
                                            label=f"offload loop {threads} thr")
        threads = numba.get_num_threads()
    own = seconds["fastopt"]
    floor = seconds["no step"]
    return {"threads": threads, "params": built["fastopt"].size,
            "batch": int(built["fastopt"].x.shape[0]), "seconds": seconds,
            "speedups": {name: value / own for name, value in seconds.items()
                         if name not in ("fastopt", "no step")},
            "step_seconds": {name: value - floor for name, value in seconds.items()
                             if name != "no step"}}


def loop_rows(thread_counts, deepspeed=False, progress=None, **options):
    return [loop_row(threads, deepspeed, progress, **options) for threads in thread_counts]


def loop_count(thread_counts, rounds=None):
    return len(thread_counts) * (loops.ROUNDS if rounds is None else rounds)


LOOP_HEADERS = ["params", "thr", "fastopt", "torch 3-pass", "deepspeed 3-pass", "no step",
                "x torch", "x deepspeed", "step: fastopt", "torch", "deepspeed"]


def loop_table(rows):
    from .report import fmt_ratio, fmt_size, fmt_time, table
    body = []
    for row in rows:
        seconds, speedups, steps = row["seconds"], row["speedups"], row["step_seconds"]
        body.append([fmt_size(row["params"]), row["threads"], fmt_time(seconds["fastopt"]),
                     fmt_time(seconds.get("torch 3-pass")),
                     fmt_time(seconds.get("deepspeed 3-pass")), fmt_time(seconds["no step"]),
                     fmt_ratio(speedups.get("torch 3-pass")),
                     fmt_ratio(speedups.get("deepspeed 3-pass")),
                     fmt_time(steps["fastopt"]), fmt_time(steps.get("torch 3-pass")),
                     fmt_time(steps.get("deepspeed 3-pass"))])
    return table(LOOP_HEADERS, body, [">"] * len(LOOP_HEADERS))


LOOP_LEGEND = ("ms per offload-loop iteration (median; blocks of each configuration "
               "alternate in one process): a bf16 MLP "
               f"{'-'.join(map(str, SIZES))}, batch {BATCH}, forward and backward in bf16; "
               "bf16 gradients copied into one flat buffer, the step, the bf16 copy copied "
               "back into the params. fastopt: one fastopt.offload.adam_step call; torch / "
               "deepspeed 3-pass: unscale, torch.optim.Adam(fused=True) / DeepSpeedCPUAdam "
               "on the fp32 master, cast; no step: the loop without a step (its floor: "
               "forward, backward, both copies); x: their time over fastopt's; step: each "
               "time less no step's (the optimizer's share of the iteration)")
