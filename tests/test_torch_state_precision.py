"""``fastopt.torch`` with ``state_dtype="bfloat16"``: the state tensors are bfloat16, each
step is the float32 step rounded stochastically (the reference's bits), state dicts
interchange with ``torch.optim`` (which widens the state as it loads), and refusals
change nothing."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402
from fastopt import reference  # noqa: E402
from fastopt import threads as fastopt_threads  # noqa: E402
from fastopt.kernels import gathered, hostpool  # noqa: E402
from fastopt.kernels.halves import noise_key  # noqa: E402

CASES = [("Adam", {}), ("AdamW", {"amsgrad": True}), ("SGD", {"momentum": 0.9}),
         ("RMSprop", {"centered": True, "momentum": 0.5}), ("Adagrad", {}),
         ("Lion", {"weight_decay": 0.1}), ("Adadelta", {}), ("Adamax", {}), ("ASGD", {}),
         ("NAdam", {}), ("RAdam", {}), ("Rprop", {}), ("Yogi", {})]
#: Hyperparameters that set a rule's initial state: the float32 twin gets their bf16
#: rounding, where bf16 state starts.
INITIAL = {"Rprop": "lr", "Yogi": "initial_accumulator_value"}


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3)).to(dtype)


def _backward(model, step):
    torch.manual_seed(100 + step)
    model(torch.randn(8, 6, dtype=next(model.parameters()).dtype)).pow(2).mean().backward()


def _train(model, opt, steps, first=0):
    """``steps`` iterations of ``zero_grad()``, a backward, ``step()``."""
    for step in range(first, first + steps):
        opt.zero_grad()
        _backward(model, step)
        opt.step()


def _bits(rule, name, noise):
    high = noise >> np.uint32(16)
    if name in ("exp_avg_sq", "max_exp_avg_sq", "grad_avg", "acc_delta", "exp_inf", "prev"):
        return high
    if name == "momentum_buffer" and rule == "RMSprop":
        return reference.more_noise(noise)
    return noise


@pytest.mark.parametrize("path", ["per-param", "gathered", "flat"])
@pytest.mark.parametrize("rule,options", CASES, ids=[c[0] for c in CASES])
def test_each_step_is_the_float32_step_rounded_stochastically(rule, options, path,
                                                               monkeypatch):
    """A float32-state twin loaded with the widened state, stepped, then rounded with the
    reference's bits for the run's key, equals the bf16-state step bit for bit. Each run
    of params stepped by one call has its own key: one per param when autograd's
    gradients are read in place (``per-param``), one per bucket when they are gathered
    (small ones, after ``zero_grad()``) or bound to the flat buffer."""
    set_to_none = path != "flat"
    if path == "per-param":
        monkeypatch.setattr(ft.buckets, "GATHER_BELOW", 0)
    model = _model()
    opt = getattr(ft, rule)(model.parameters(), lr=1e-2, state_dtype="bfloat16", **options)
    params = list(model.parameters())
    for step in range(1, 8):
        opt.zero_grad(set_to_none=set_to_none)
        _backward(model, step)
        twin_model = _model()
        twin_model.load_state_dict(model.state_dict())
        hyper = dict(options, lr=1e-2)
        if rule in INITIAL:   # bf16 state starts at the bf16 rounding of its initial value
            hyper[INITIAL[rule]] = float(torch.tensor(
                hyper.get(INITIAL[rule], getattr(ft, rule)([torch.zeros(1)]).defaults[
                    INITIAL[rule]])).to(torch.bfloat16).float())
        twin = getattr(ft, rule)(twin_model.parameters(), **hyper)
        if step > 1:
            saved = opt.state_dict()
            for group in saved["param_groups"]:
                group["state_dtype"] = None
            twin.load_state_dict(saved)
        for p, q in zip(params, twin_model.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        twin.step()
        offsets = np.cumsum([0] + [p.numel() for p in params])
        for i, (p, q) in enumerate(zip(params, twin_model.parameters())):
            assert torch.equal(p, q)
            first, at = (i, 0) if path == "per-param" else (0, offsets[i])
            noise = reference.blocked_noise(noise_key(step, first), offsets[-1],
                                            gathered.BLOCK)
            for name, value in twin.state[q].items():
                if name == "step" or name in opt.rule.scalar_state_names:
                    continue
                got = opt.state[p][name]
                assert got.dtype == torch.bfloat16
                bits = _bits(rule, name, noise)[at:at + p.numel()]
                want = reference.round_stochastic(value.reshape(-1).numpy(), bits)
                np.testing.assert_array_equal(
                    got.view(torch.int16).reshape(-1).numpy().view(np.uint16), want,
                    err_msg=f"{name} of params[{i}] at step {step}")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("path", ["per-param", "flat"])
@pytest.mark.parametrize("rule,options", [("Adam", {}), ("SGD", {"momentum": 0.9}),
                                          ("RMSprop", {"centered": True, "momentum": 0.5})])
def test_runs_over_many_blocks_round_each_block_with_its_own_key(rule, options, path,
                                                                 threads, monkeypatch):
    """A run longer than one block of ``gathered.BLOCK`` elements rounds block ``b`` with
    ``block_key(run key, b)`` and the index within the block (``reference.blocked_noise``),
    so the bits are the same whichever thread runs a block, with torch's team of 1, 2 or
    3 threads."""
    monkeypatch.setattr(ft.buckets, "GATHER_BELOW", 0)
    monkeypatch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 0)
    monkeypatch.setattr(fastopt_threads, "policy", "size")   # parallel above the threshold
    launches = []
    if hostpool.torch_team() is not None:
        original = hostpool.Team.launch
        monkeypatch.setattr(hostpool.Team, "launch",
                            lambda self, *a: (launches.append(a[-1]), original(self, *a)))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in [(300, 250), (77,), (150, 120)]]
        opt = getattr(ft, rule)(params, lr=1e-2, state_dtype="bfloat16", **options)
        twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        twin = getattr(ft, rule)(twin_params, lr=1e-2, **options)
        sizes = [p.numel() for p in params]
        assert sizes[0] > 2 * gathered.BLOCK              # three blocks in one param
        for step in range(1, 4):
            if path == "flat":
                opt.zero_grad(set_to_none=False)
            torch.manual_seed(50 + step)
            grads = [torch.randn_like(p) for p in params]
            for p, q, g in zip(params, twin_params, grads):
                if path == "flat" and p.grad is not None:
                    p.grad.copy_(g)
                else:
                    p.grad = g.clone()
                q.grad = g.clone()
            if step > 1:   # the twin continues from the widened bf16 state
                saved = opt.state_dict()
                for group in saved["param_groups"]:
                    group["state_dtype"] = None
                twin.load_state_dict(saved)
            opt.step()
            twin.step()
            offsets = np.cumsum([0] + sizes)
            flat_run = path == "flat" and step > 1   # after zero_grad bound the views
            for i, (p, q) in enumerate(zip(params, twin_params)):
                assert torch.equal(p, q)
                first, at = (0, offsets[i]) if flat_run else (i, 0)
                total = offsets[-1] if flat_run else sizes[i]
                noise = reference.blocked_noise(noise_key(step, first), total,
                                                gathered.BLOCK)
                for name, value in twin.state[q].items():
                    if name == "step":
                        continue
                    bits = _bits(rule, name, noise)[at:at + p.numel()]
                    want = reference.round_stochastic(value.reshape(-1).numpy(), bits)
                    got = opt.state[p][name].view(torch.int16).reshape(-1).numpy()
                    np.testing.assert_array_equal(got.view(np.uint16), want,
                                                  err_msg=f"{name} of params[{i}], {step}")
        if hostpool.torch_team() is not None:   # on torch's team where it has threads
            assert bool(launches) == (threads > 1) and set(launches) <= {threads}
    finally:
        torch.set_num_threads(before)


def test_bf16_params_train_over_a_float32_master_with_bf16_state():
    model = _model(dtype=torch.bfloat16)
    opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    _train(model, opt, 5)
    for p in model.parameters():
        entry = opt.state[p]
        assert entry["master"].dtype == torch.float32
        assert entry["exp_avg"].dtype == entry["exp_avg_sq"].dtype == torch.bfloat16
        assert torch.equal(p, entry["master"].to(torch.bfloat16))


def test_state_dicts_interchange_with_torch_optim():
    """torch.optim.Adam widens bf16 state as it loads (exact) and continues; a
    torch.optim state dict loads into bf16 state rounded to nearest."""
    model = _model()
    opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    _train(model, opt, 3)
    saved = opt.state_dict()
    other = _model()
    other.load_state_dict(model.state_dict())
    theirs = torch.optim.Adam(other.parameters(), lr=1e-2)
    theirs.load_state_dict(saved)
    for p, q in zip(model.parameters(), other.parameters()):
        assert theirs.state[q]["exp_avg"].dtype == torch.float32
        assert torch.equal(theirs.state[q]["exp_avg"], opt.state[p]["exp_avg"].float())
    _backward(other, 9)
    theirs.step()
    back = ft.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    back.load_state_dict(theirs.state_dict())
    for p, q in zip(model.parameters(), other.parameters()):
        assert back.state[p]["exp_avg_sq"].dtype == torch.bfloat16
        assert torch.equal(back.state[p]["exp_avg_sq"],
                           theirs.state[q]["exp_avg_sq"].to(torch.bfloat16))


def test_refusals_change_nothing():
    with pytest.raises(ValueError, match="float64"):
        ft.Adam(_model(dtype=torch.float64).parameters(), state_dtype="bfloat16")
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        ft.Adam(_model().parameters(), state_dtype="float16")
    with pytest.raises(TypeError):
        ft.LAMB(_model().parameters(), state_dtype="bfloat16")
    model = _model()
    opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    _backward(model, 0)
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    states = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    _backward(model, 1)
    with pytest.raises(ValueError, match="state_dtype"):   # a forged value
        opt.load_state_dict({**opt.state_dict(), "param_groups": [
            {**opt.state_dict()["param_groups"][0], "state_dtype": "float16"}]})
    opt.param_groups[0]["state_dtype"] = None
    with pytest.raises(ValueError, match="cannot change after construction"):
        opt.step()
    for p, b, s in zip(model.parameters(), before, states):
        assert torch.equal(p, b)
        assert torch.equal(opt.state[p]["exp_avg"], s)
        assert opt.state[p]["step"] == 1


def test_checkpoint_round_trips_bf16_state(tmp_path):
    pytest.importorskip("safetensors")
    import fastopt
    model = _model()
    opt = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    _train(model, opt, 3)
    fastopt.save(opt, tmp_path / "opt.safetensors", params=True)
    other = _model(seed=5)
    again = ft.AdamW(other.parameters(), lr=1e-2, state_dtype="bfloat16")
    fastopt.load(again, tmp_path / "opt.safetensors")
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
        for name in ("exp_avg", "exp_avg_sq"):
            assert again.state[q][name].dtype == torch.bfloat16
            assert torch.equal(again.state[q][name], opt.state[p][name])
    for mod, o in ((model, opt), (other, again)):
        _train(mod, o, 1, first=9)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)


def test_the_dtype_itself_names_bf16_state():
    model = _model()
    opt = ft.Adam(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    assert opt.defaults["state_dtype"] == opt.param_groups[0]["state_dtype"] == "bfloat16"
    _backward(model, 0)
    opt.step()
    assert opt.state[next(model.parameters())]["exp_avg"].dtype == torch.bfloat16


def test_a_load_keeps_the_optimizers_state_dtype_and_converts_the_state():
    """A float32-state checkpoint (this class's, saying state_dtype None) loads into a
    bf16-state optimizer as bf16 state rounded to nearest, and the reverse widens."""
    model = _model()
    full = ft.Adam(model.parameters(), lr=1e-2)
    _backward(model, 0)
    full.step()
    low = ft.Adam(model.parameters(), lr=1e-2, state_dtype="bfloat16")
    low.load_state_dict(full.state_dict())
    assert low.param_groups[0]["state_dtype"] == "bfloat16"
    for p in model.parameters():
        assert torch.equal(low.state[p]["exp_avg_sq"],
                           full.state[p]["exp_avg_sq"].to(torch.bfloat16))
    back = ft.Adam(model.parameters(), lr=1e-2)
    back.load_state_dict(low.state_dict())
    assert back.param_groups[0]["state_dtype"] is None
    for p in model.parameters():
        assert back.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(back.state[p]["exp_avg"], low.state[p]["exp_avg"].float())
