"""fastopt.torch against torch.optim: same trajectories, checkpoints, and torch's idioms.

Every comparison trains a small MLP on a fixed batch twice from the same initial weights
(``copy.deepcopy``), once with ``torch.optim``'s class (``foreach=False``: the reference
single-tensor implementation) and once with ``fastopt.torch``'s, and compares the
parameters after every step.

Tolerances. float32: rtol 1e-5, atol 1e-6. Both sides compute the same formula in float32
but in a different order (fastopt multiplies by a precomputed ``1/sqrt(bc2)`` where torch
divides, fuses the whole update into one expression, ...), so each step may differ by a few
ulps (~1e-7 relative); over 30 steps the differences stay near 1e-6 relative, and atol
covers params that pass near zero. float64: rtol 1e-12, atol 1e-14, the same argument with
ulps of 1e-16. (``maximize=True`` runs ascend ``-loss``, so they stay bounded; ascending
the MSE itself diverges and amplifies ulp differences without limit.)
"""

import copy
import io
import itertools
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt.torch import buckets  # noqa: E402
from torch_models import make_batch, make_model  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.float64: dict(rtol=1e-12, atol=1e-14)}


def backward(model, batch, sign=1):
    x, y = batch
    loss = sign * nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss


def assert_close_scaled(actual, expected, dtype=torch.float32):
    """For state buffers: atol scaled by the buffer's largest magnitude, since an element
    built from terms that large carries rounding errors of their ulps (a centered RMSprop
    momentum buffer spans 0.05 to 12 on the test model)."""
    tol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def assert_same_params(reference, candidate, dtype, step):
    for (name, a), b in zip(reference.named_parameters(), candidate.parameters()):
        torch.testing.assert_close(b, a, **TOL[dtype], msg=lambda m: f"step {step}, {name}: {m}")


def side_by_side(torch_cls, fast_cls, options, steps=30, dtype=torch.float32,
                 models=None, before_step=None, zero_grad=None, torch_extra=None):
    """Train twice from the same start; compare params after every step. Returns both
    (model, optimizer) pairs."""
    reference = models[0] if models else make_model(dtype)
    candidate = models[1] if models else copy.deepcopy(reference)
    batch = make_batch(dtype)
    # maximize=True ascends -loss: the same bounded trajectory as descending the loss
    # (ascending the MSE itself diverges, and float32 comparisons with it).
    sign = -1 if options.get("maximize") else 1
    torch_opt = torch_cls(reference.parameters(), foreach=False, **options,
                          **(torch_extra or {}))
    fast_opt = fast_cls(candidate.parameters(), **options)
    for step in range(steps):
        for model, opt in ((reference, torch_opt), (candidate, fast_opt)):
            if zero_grad is None:
                opt.zero_grad()
            else:
                zero_grad(model, opt, step)
            backward(model, batch, sign)
            if before_step is not None:
                before_step(model, opt, step)
            opt.step()
        assert_same_params(reference, candidate, dtype, step)
    return (reference, torch_opt), (candidate, fast_opt)


# --- every option combination torch supports -------------------------------------------

def _configs():
    for momentum, dampening, nesterov, wd, maximize in itertools.product(
            (0.0, 0.9), (0.0, 0.5), (False, True), (0.0, 0.01), (False, True)):
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # torch rejects these
        yield "SGD", dict(lr=0.05, momentum=momentum, dampening=dampening,
                          nesterov=nesterov, weight_decay=wd, maximize=maximize)
    for lr_decay, init, wd, maximize in itertools.product(
            (0.0, 0.01), (0.0, 0.1), (0.0, 0.01), (False, True)):
        yield "Adagrad", dict(lr=0.05, lr_decay=lr_decay, initial_accumulator_value=init,
                              weight_decay=wd, maximize=maximize)
    for centered, momentum, wd, maximize in itertools.product(
            (False, True), (0.0, 0.9), (0.0, 0.01), (False, True)):
        yield "RMSprop", dict(lr=0.005, centered=centered, momentum=momentum,
                              weight_decay=wd, maximize=maximize)
    for name in ("Adam", "AdamW"):
        for amsgrad, wd, maximize in itertools.product(
                (False, True), (0.0, 0.05), (False, True)):
            yield name, dict(lr=0.01, amsgrad=amsgrad, weight_decay=wd, maximize=maximize)


CONFIGS = list(_configs())


def _config_id(config):
    name, options = config
    return name + "-" + ",".join(f"{k}={v}" for k, v in options.items() if k != "lr")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_matches_torch_optim_every_step(config, dtype):
    name, options = config
    (_, torch_opt), (_, fast_opt) = side_by_side(
        getattr(torch.optim, name), getattr(ft, name), options, dtype=dtype)
    # Same state layout: keys per param, and the step count's value and dtype.
    ours, theirs = fast_opt.state_dict()["state"], torch_opt.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    for index in theirs:
        assert ours[index].keys() == theirs[index].keys()
        if "step" in theirs[index]:
            assert ours[index]["step"].dtype == theirs[index]["step"].dtype
            assert ours[index]["step"].item() == theirs[index]["step"].item() == 30


def test_one_kernel_call_per_group_flat_storage_and_in_place_grads(adam_kernel_sizes):
    """zero_grad(set_to_none=False) binds the grads to the flat gradient buffer: backward
    accumulates there and each step is one kernel call per group."""
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = ft.Adam(model.parameters(), lr=0.01)
    (bucket,) = opt._buckets[0]
    start, size = bucket.param.data_ptr(), bucket.param.element_size()
    for p, b, a in zip(model.parameters(), before, bucket.offsets):
        assert p.data_ptr() == start + a * size      # rebound to its slice of the flat buffer
        assert torch.equal(p, b)                     # values kept
    batch = make_batch()
    calls = adam_kernel_sizes
    for i in range(3):
        opt.zero_grad(set_to_none=False)
        backward(model, batch)
        opt.step()
        for p, view in zip(model.parameters(), bucket.grad_views):
            # autograd wrote into the view once zero_grad had bound it (steps 2, 3)
            assert (p.grad.data_ptr() == view.data_ptr()) == (i > 0)
    # The first step gathers autograd's small fresh gradients into the flat buffer (one
    # call); after zero_grad(set_to_none=False) bound them to it, one call per step.
    assert calls == [bucket.param.numel()] * 3
    for p, exp_avg in zip(model.parameters(), bucket.state_views["exp_avg"]):
        assert opt.state[p]["exp_avg"] is exp_avg


@pytest.mark.parametrize("gather_below", [1, 1 << 16])
def test_default_zero_grad_sets_none_and_step_reads_autograds_gradients(
        adam_kernel_sizes, gather_below, monkeypatch):
    """zero_grad() is torch's (set_to_none=True); p.grad is never rebound, and the step
    matches torch.optim.Adam. Large gradients (GATHER_BELOW=1 here) are read where
    autograd allocated them, one kernel call per param, nothing copied into the flat
    gradient buffer; small ones (this model's, by default) are gathered into it with one
    copy and stepped with one kernel call."""
    monkeypatch.setattr(buckets, "GATHER_BELOW", gather_below)
    monkeypatch.setattr(buckets, "GATHER_BELOW_ONE_CALL", gather_below)
    model, reference = make_model(), make_model()
    opt = ft.Adam(model.parameters(), lr=0.01)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    (bucket,) = opt._buckets[0]
    batch = make_batch()
    calls = adam_kernel_sizes
    for _ in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        backward(model, batch)
        backward(reference, batch)
        grads = [p.grad for p in model.parameters()]
        opt.step()
        ref_opt.step()
        assert [p.grad for p in model.parameters()] == grads  # not rebound
        assert all(g.data_ptr() != v.data_ptr() for g, v in zip(grads, bucket.grad_views))
    if gather_below == 1:
        assert calls == [p.numel() for p in model.parameters()] * 3
        assert not bucket.grad.any()    # nothing was gathered into the flat gradient buffer
    else:
        assert calls == [bucket.param.numel()] * 3
        for p, view in zip(model.parameters(), bucket.grad_views):
            assert torch.equal(view, p.grad)    # gathered: a copy, p.grad not rebound
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-6)


def test_gradient_set_to_a_view_of_the_flat_buffers_is_copied_before_the_kernel():
    """A gradient that lies in the optimizer's own flat param memory (set by hand) is
    copied first, so the kernel never reads what it writes: same result as a copy."""
    model, reference = make_model(), make_model()
    opt, ref_opt = ft.SGD(model.parameters(), lr=0.1), torch.optim.SGD(reference.parameters(), lr=0.1)
    for p, q in zip(model.parameters(), reference.parameters()):
        p.grad = p.detach()[...]            # the param's own memory, a view of the flat buffer
        q.grad = q.detach().clone()
    opt.step()
    ref_opt.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # Each param has a storage of its own over its slice, so lying in the flat memory is
    # told by address ranges: grads set to the other param's memory are both copied
    # before either kernel call writes (read in place, the second would see the first's
    # update).
    a, b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0, 5.0]))
    opt = ft.SGD([nn.Parameter(torch.zeros(3)), a, b], lr=0.5)   # the first gets no grad
    a.grad, b.grad = b.detach(), a.detach()
    opt.step()
    assert torch.equal(a.detach(), torch.tensor([1.0 - 1.5, 2.0 - 2.5]))
    assert torch.equal(b.detach(), torch.tensor([3.0 - 0.5, 5.0 - 1.0]))


# --- checkpoints ------------------------------------------------------------------------

CHECKPOINT_CONFIGS = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adagrad": dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
    "RMSprop": dict(lr=0.005, momentum=0.9, centered=True, weight_decay=0.01),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
    "AdamW": dict(lr=0.01, amsgrad=True, weight_decay=0.05),
}


def _through_bytes(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # weights_only=True: plain tensors and numbers only


@pytest.mark.parametrize("transport", ["state_dict", "torch.save"])
@pytest.mark.parametrize("direction", ["torch->fastopt", "fastopt->torch"])
@pytest.mark.parametrize("name", list(CHECKPOINT_CONFIGS))
def test_checkpoint_interchange(name, direction, transport):
    options = CHECKPOINT_CONFIGS[name]
    torch_cls = lambda params: getattr(torch.optim, name)(params, foreach=False, **options)  # noqa
    fast_cls = lambda params: getattr(ft, name)(params, **options)  # noqa
    assert_checkpoint_interchange(torch_cls, fast_cls, direction, transport)


def assert_checkpoint_interchange(torch_cls, fast_cls, direction, transport):
    """5 steps with one class, its state dict (through ``torch.save`` bytes or not) into
    the other class on a copy of the model, 10 more steps on both: params in step every
    step, and the final state (same keys) close."""
    first, second = ((torch_cls, fast_cls) if direction == "torch->fastopt"
                     else (fast_cls, torch_cls))
    batch = make_batch()
    model = make_model()
    opt = first(model.parameters())
    for _ in range(5):
        opt.zero_grad()
        backward(model, batch)
        opt.step()
    saved = opt.state_dict()
    if transport == "torch.save":
        saved = _through_bytes(saved)
    resumed_model = copy.deepcopy(model)
    resumed = second(resumed_model.parameters())
    resumed.load_state_dict(saved)
    for step in range(10):
        for m, o in ((model, opt), (resumed_model, resumed)):
            o.zero_grad()
            backward(m, batch)
            o.step()
        assert_same_params(model, resumed_model, torch.float32, step)
    final = resumed.state_dict()["state"]
    for index, entry in opt.state_dict()["state"].items():
        assert final[index].keys() == entry.keys()
        for key, value in entry.items():
            assert_close_scaled(final[index][key], value)


def test_state_dict_is_a_snapshot_and_adagrad_state_is_eager():
    model = make_model()
    opt = ft.Adagrad(model.parameters(), initial_accumulator_value=0.5)
    reference = torch.optim.Adagrad(make_model().parameters(), initial_accumulator_value=0.5)
    ours, theirs = opt.state_dict(), reference.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for index in theirs["state"]:
        assert ours["state"][index].keys() == theirs["state"][index].keys()
        torch.testing.assert_close(ours["state"][index]["sum"], theirs["state"][index]["sum"])
    backward(model, make_batch())
    opt.step()
    assert ours["state"][0]["step"].item() == 0  # the earlier snapshot did not move
    assert opt.state_dict()["state"][0]["step"].item() == 1


def test_adagrad_state_as_torch_eager_for_the_constructor_lazy_for_added_groups():
    """torch.optim.Adagrad (2.13) creates state at construction for every param it is
    given (frozen ones too) and, for params added by add_param_group, at their first
    step; ``sum`` starts at the constructor's initial_accumulator_value in every group."""
    sides = []
    for module in (torch.optim, ft):
        torch.manual_seed(0)
        first, added = nn.Linear(3, 2), nn.Linear(3, 2)
        first.bias.requires_grad_(False)
        added.weight.requires_grad_(False)
        opt = module.Adagrad(first.parameters(), lr=0.1, initial_accumulator_value=0.5)
        opt.add_param_group({"params": list(added.parameters()),
                             "initial_accumulator_value": 0.25})
        created = [len(opt.state.get(p, {})) for p in [*first.parameters(), *added.parameters()]]
        x = torch.ones(4, 3)
        (first(x).sum() + added(x).sum()).backward()
        opt.step()
        sides.append((created, opt.state_dict(), [p.detach().clone() for p in
                                                  [*first.parameters(), *added.parameters()]]))
    (created, ours, params), (created_torch, theirs, params_torch) = sides[1], sides[0]
    assert created == created_torch == [2, 2, 0, 0]
    assert ours["state"].keys() == theirs["state"].keys() == {0, 1, 3}
    for index in theirs["state"]:
        torch.testing.assert_close(ours["state"][index]["sum"], theirs["state"][index]["sum"])
        assert ours["state"][index]["step"].item() == theirs["state"][index]["step"].item()
    for a, b in zip(params, params_torch):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_state_under_a_key_of_the_users_own_is_passed_through_as_torch_does():
    model = make_model()
    ours = ft.Adam(model.parameters(), lr=0.01)
    theirs = torch.optim.Adam(make_model().parameters(), lr=0.01)
    for opt in (ours, theirs):
        opt.state["key"] = 1
        opt.state["counts"] = {"seen": torch.tensor(3.0)}
    saved, expected = ours.state_dict(), theirs.state_dict()
    assert saved["state"]["key"] == expected["state"]["key"] == 1
    assert saved["state"]["counts"]["seen"].item() == 3.0
    assert saved["state"]["counts"]["seen"] is not ours.state["counts"]["seen"]  # a copy
    backward(model, make_batch())
    ours.step()
    restored = ft.Adam(make_model().parameters(), lr=0.01)
    restored.load_state_dict(ours.state_dict())
    assert restored.state["key"] == 1
    assert restored.state_dict()["state"][0]["step"].item() == 1


# --- model checkpoints: each param has a storage of its own ------------------------------

def _storage_range(tensor):
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def test_each_param_grad_and_state_slice_has_its_own_storage_over_its_slice():
    """Tools that tell tied weights by their storage (safetensors, accelerate) must see
    separate tensors: every slice of a flat buffer has its own storage object, exactly
    its bytes of the flat memory, overlapping no other; the flat buffer outlives the
    optimizer through them."""
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=0.01)
    backward(model, make_batch())
    opt.step()
    opt.zero_grad(set_to_none=False)   # no grads yet: binds nothing
    (bucket,) = opt._buckets[0]
    params = list(model.parameters())
    for tensors, flat in ((params, bucket.param), (bucket.grad_views, bucket.grad),
                          (bucket.state_views["exp_avg"], bucket.state["exp_avg"]),
                          ([opt.state[p]["exp_avg_sq"] for p in params],
                           bucket.state["exp_avg_sq"])):
        ranges = [_storage_range(t) for t in tensors]
        for t, (start, stop), offset in zip(tensors, ranges, bucket.offsets):
            assert start == t.data_ptr() == flat.data_ptr() + offset * flat.element_size()
            assert stop - start == t.nbytes
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))  # no overlap
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)
    values = [p.detach().clone() for p in params]
    del opt, bucket
    garbage = [torch.full((4096,), 7.0) for _ in range(64)]   # reuse freed memory, if any
    for p, v in zip(params, values):
        assert torch.equal(p, v)
    del garbage


def test_safetensors_save_model_and_load_model_round_trip(tmp_path):
    """safetensors refused the model while every param was a view of one flat tensor."""
    from safetensors.torch import load_model, save_model
    model, batch = make_model(), make_batch()
    opt = ft.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        backward(model, batch)
        opt.step()
    saved = [p.detach().clone() for p in model.parameters()]
    save_model(model, str(tmp_path / "model.safetensors"))
    for _ in range(2):
        opt.zero_grad()
        backward(model, batch)
        opt.step()
    assert not torch.equal(model[0].weight, saved[0])
    load_model(model, str(tmp_path / "model.safetensors"))
    for p, v in zip(model.parameters(), saved):
        assert torch.equal(p, v)   # bitwise
    # Loaded in place: the params still live in the flat buffer, so the optimizer steps.
    opt.zero_grad()
    backward(model, batch)
    opt.step()
    assert not torch.equal(model[0].weight, saved[0])


def test_torch_save_of_one_param_writes_only_its_bytes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 4))
    opt = ft.SGD(model.parameters(), lr=0.1)
    bias = model[1].bias                    # 16 bytes of a 264 KB flat buffer
    assert opt._buckets[0][0].param.nbytes > 250_000
    torch.save(bias, tmp_path / "bias.pt")
    size = (tmp_path / "bias.pt").stat().st_size
    assert size < bias.nbytes + 4096        # the zip archive's own overhead is ~1.5 KB
    assert torch.equal(torch.load(tmp_path / "bias.pt"), bias)


def test_load_state_dict_checks_shapes():
    opt = ft.Adam(make_model().parameters())
    other = torch.optim.Adam([nn.Parameter(torch.zeros(3)) for _ in range(4)])
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())


def _set_group(key, value):
    return lambda d: d["param_groups"][0].__setitem__(key, value)


def _set_state(index, key, value):
    return lambda d: d["state"][index].__setitem__(key, value(d["state"][index]))


BAD_TORCH_LOADS = {
    "lr-nan": (_set_group("lr", float("nan")), ValueError, "lr"),
    "lr-negative": (_set_group("lr", -0.1), ValueError, "lr"),
    "lr-huge-int": (_set_group("lr", 10 ** 400), ValueError, "lr"),
    "lr-string": (_set_group("lr", "0.1"), TypeError, "lr"),
    "beta1-one": (_set_group("betas", (1.0, 0.999)), ValueError, "beta"),
    "beta2-negative": (_set_group("betas", (0.9, -0.5)), ValueError, "beta"),
    "eps-negative": (_set_group("eps", -1e-8), ValueError, "eps"),
    "amsgrad-string": (_set_group("amsgrad", "yes"), TypeError, "amsgrad"),
    "differentiable": (_set_group("differentiable", True), ValueError, "differentiable"),
    "step-negative": (_set_state(1, "step", lambda e: torch.tensor(-1.0)), ValueError,
                      "step"),
    "step-nan": (_set_state(1, "step", lambda e: torch.tensor(float("nan"))), ValueError,
                 "step"),
    "step-inf": (_set_state(1, "step", lambda e: float("inf")), ValueError, "step"),
    "step-fraction": (_set_state(1, "step", lambda e: 2.5), ValueError, "step"),
    "step-huge-int": (_set_state(1, "step", lambda e: 10 ** 400), ValueError, "step"),
    "step-bool": (_set_state(1, "step", lambda e: torch.tensor(True)), ValueError, "step"),
    "state-sparse": (_set_state(1, "exp_avg", lambda e: e["exp_avg"].to_sparse()),
                     TypeError, "sparse"),
    "state-complex": (_set_state(3, "exp_avg_sq",
                                 lambda e: e["exp_avg_sq"].to(torch.complex64)),
                      TypeError, "complex"),
    "state-bool": (_set_state(3, "exp_avg", lambda e: e["exp_avg"] > 0), TypeError, "bool"),
    "state-number": (_set_state(3, "exp_avg", lambda e: 0.5), TypeError, "exp_avg"),
    "state-not-a-dict": (lambda d: d["state"].__setitem__(2, [1, 2]), ValueError, "dict"),
}


@pytest.mark.parametrize("case", BAD_TORCH_LOADS)
def test_bad_load_is_refused_before_torch_replaces_anything(case):
    """Each bad value raises from load_state_dict with groups, state and flat buffers as
    they were; training then continues bitwise like a twin that never saw the load
    (before, some were accepted and failed at the next step, after updating params)."""
    mutate, error, match = BAD_TORCH_LOADS[case]
    batch = make_batch()
    model, twin = make_model(), make_model()
    opt, twin_opt = ft.Adam(model.parameters(), lr=0.01), ft.Adam(twin.parameters(), lr=0.01)

    def train(steps):
        for m, o in ((model, opt), (twin, twin_opt)):
            for _ in range(steps):
                o.zero_grad()
                backward(m, batch)
                o.step()

    train(3)
    bad = opt.state_dict()
    mutate(bad)
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    for group, twin_group in zip(opt.param_groups, twin_opt.param_groups):
        assert {k: v for k, v in group.items() if k != "params"} == {
            k: v for k, v in twin_group.items() if k != "params"}
    train(2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    ours, theirs = opt.state_dict()["state"], twin_opt.state_dict()["state"]
    for index, entry in theirs.items():
        for key, value in entry.items():
            assert torch.equal(ours[index][key], value)


def test_adamw_refuses_an_adam_state_dict_and_adam_takes_the_flag_as_torch():
    """fastopt.torch.AdamW refuses decoupled_weight_decay=False (torch.optim.AdamW would
    silently continue the Adam run with decoupled decay). fastopt.torch.Adam, like
    torch.optim.Adam, takes the flag as a hyperparameter: the loaded value wins."""
    model = make_model()
    adam = torch.optim.Adam(model.parameters(), weight_decay=0.1)
    backward(model, make_batch())
    adam.step()
    opt = ft.AdamW(make_model().parameters(), weight_decay=0.1)
    before = opt.state_dict()
    with pytest.raises(ValueError, match="decoupled_weight_decay=False, but AdamW"):
        opt.load_state_dict(adam.state_dict())
    assert opt.state_dict() == before   # no state yet, groups as they were
    adamw = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    plain = ft.Adam(make_model().parameters())
    plain.load_state_dict(adamw.state_dict())
    assert plain.param_groups[0]["decoupled_weight_decay"] is True


# --- torch's idioms -------------------------------------------------------------------

def train_both(reference, candidate, steps, iteration, dtype=torch.float32):
    """``iteration(side, step)`` for side 0 (torch) and 1 (fastopt); compare each step."""
    for step in range(steps):
        iteration(0, step)
        iteration(1, step)
        assert_same_params(reference, candidate, dtype, step)


def test_lr_scheduler():
    reference = make_model()
    candidate = copy.deepcopy(reference)
    models = (reference, candidate)
    opts = (torch.optim.Adam(reference.parameters(), lr=0.05, foreach=False),
            ft.Adam(candidate.parameters(), lr=0.05))
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5) for o in opts]
    batch = make_batch()

    def iteration(side, step):
        opts[side].zero_grad()
        backward(models[side], batch)
        opts[side].step()
        schedulers[side].step()

    train_both(reference, candidate, 20, iteration)
    assert opts[1].param_groups[0]["lr"] == opts[0].param_groups[0]["lr"] == 0.05 / 32


def test_clip_grad_norm():
    def before_step(model, opt, step):
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)

    side_by_side(torch.optim.SGD, ft.SGD, dict(lr=0.1, momentum=0.9), steps=15,
                 before_step=before_step)


def test_requires_grad_false_is_skipped():
    reference = make_model()
    reference[0].weight.requires_grad_(False)
    candidate = copy.deepcopy(reference)
    frozen = candidate[0].weight.detach().clone()
    # weight_decay would move a param stepped with a zero gradient: skipping shows.
    (_, _), (_, fast_opt) = side_by_side(
        torch.optim.AdamW, ft.AdamW, dict(lr=0.01, weight_decay=0.1), steps=10,
        models=(reference, candidate))
    assert candidate[0].weight.grad is None
    assert torch.equal(candidate[0].weight, frozen)
    assert candidate[0].weight not in fast_opt.state


class TwoHeads(nn.Module):
    """A trunk and two heads; ``use`` picks the heads that enter the loss."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 8).to(dtype)
        self.head_a = nn.Linear(8, 3).to(dtype)
        self.head_b = nn.Linear(8, 3).to(dtype)

    def loss(self, batch, use):
        x, y = batch
        h = torch.tanh(self.trunk(x))
        return sum(nn.functional.mse_loss(getattr(self, name)(h), y) for name in use)


def _heads_for(step):
    # head_a (the middle of the flat buffer) is unused on even steps, head_b on
    # steps divisible by 3: runs of params with and without grads, and step counts
    # that drift apart.
    use = []
    if step % 2:
        use.append("head_a")
    if step % 3:
        use.append("head_b")
    return use or ["head_a"]


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam"])
def test_params_without_grad_in_a_step_are_skipped(name):
    options = CHECKPOINT_CONFIGS[name]
    reference = TwoHeads()
    candidate = copy.deepcopy(reference)
    models = (reference, candidate)
    opts = (getattr(torch.optim, name)(reference.parameters(), foreach=False, **options),
            getattr(ft, name)(candidate.parameters(), **options))
    batch = make_batch()

    def iteration(side, step):
        opts[side].zero_grad(set_to_none=True)
        models[side].loss(batch, _heads_for(step)).backward()
        opts[side].step()

    train_both(reference, candidate, 12, iteration)
    ours, theirs = opts[1].state_dict()["state"], opts[0].state_dict()["state"]
    for index, entry in theirs.items():
        for key, value in entry.items():
            assert_close_scaled(ours[index][key], value)


@pytest.mark.parametrize("rule", ["Adam", "AdamW", "RMSprop", "SGD"])
def test_default_zero_grad_is_torchs_a_layer_unused_on_alternate_steps_stays_put(rule):
    """torch's default zero_grad() sets grads to None, so a head unused in a step is not
    moved by its momentum or moments; fastopt's default is the same (was set_to_none=False:
    Adam/AdamW/RMSprop kept moving the unused head, 8-153% apart after 6 steps)."""
    options = {"Adam": dict(lr=0.01, weight_decay=0.1), "AdamW": dict(lr=0.01),
               "RMSprop": dict(lr=0.01, momentum=0.9), "SGD": dict(lr=0.1, momentum=0.9)}[rule]
    reference = TwoHeads()
    candidate = copy.deepcopy(reference)
    models = (reference, candidate)
    opts = (getattr(torch.optim, rule)(reference.parameters(), foreach=False, **options),
            getattr(ft, rule)(candidate.parameters(), **options))
    batch = make_batch()

    def iteration(side, step):
        opts[side].zero_grad()
        assert all(p.grad is None for p in models[side].parameters())
        models[side].loss(batch, _heads_for(step)).backward()
        opts[side].step()

    train_both(reference, candidate, 12, iteration)


def test_zero_grad_set_to_none_false_matches_torchs_and_binds_the_flat_buffer():
    reference = TwoHeads()
    candidate = copy.deepcopy(reference)
    models = (reference, candidate)
    opts = (torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.1,
                             foreach=False),
            ft.Adam(candidate.parameters(), lr=0.01, weight_decay=0.1))
    batch = make_batch()

    def iteration(side, step):
        opts[side].zero_grad(set_to_none=False)
        models[side].loss(batch, _heads_for(step)).backward()
        opts[side].step()

    train_both(reference, candidate, 12, iteration)
    view = opts[1]._buckets[0][0].grad_views[2]
    assert candidate.head_a.weight.grad.data_ptr() == view.data_ptr()


@pytest.mark.parametrize("how", ["optimizer", "module"])
def test_gradients_set_to_none_are_read_where_autograd_put_them(how, monkeypatch):
    monkeypatch.setattr(buckets, "GATHER_BELOW", 1)   # these tiny grads would be gathered
    monkeypatch.setattr(buckets, "GATHER_BELOW_ONE_CALL", 1)
    def zero_grad(model, opt, step):
        if how == "module":
            model.zero_grad()  # set_to_none=True: autograd allocates new grads
        else:
            opt.zero_grad(set_to_none=True)

    (_, _), (candidate, fast_opt) = side_by_side(
        torch.optim.RMSprop, ft.RMSprop, dict(lr=0.005, momentum=0.5), steps=10,
        zero_grad=zero_grad)
    # The step read autograd's gradients in place: not gathered, not rebound.
    bucket = fast_opt._buckets[0][0]
    for p, view in zip(candidate.parameters(), bucket.grad_views):
        assert p.grad is not None and p.grad.data_ptr() != view.data_ptr()
    assert not bucket.grad.any()


def test_hand_set_gradients_are_gathered():
    model = make_model()
    opt = ft.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [torch.randn_like(p).t().contiguous().t() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g  # not the flat view; some are non-contiguous
    opt.step()
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p, b - 0.5 * g)


def test_add_param_group():
    reference = make_model()
    candidate = copy.deepcopy(reference)
    models = (reference, candidate)
    opts = (torch.optim.Adam(reference[0].parameters(), lr=0.01, foreach=False),
            ft.Adam(candidate[0].parameters(), lr=0.01))
    batch = make_batch()

    def iteration(side, step):
        if step == 4:
            opts[side].add_param_group({"params": models[side][2].parameters(),
                                        "lr": 0.03, "amsgrad": True})
        opts[side].zero_grad(set_to_none=True)
        backward(models[side], batch)
        opts[side].step()

    train_both(reference, candidate, 12, iteration)
    assert len(opts[1]._buckets) == 2
    assert opts[1].param_groups[1]["amsgrad"] is True


def test_mixed_dtypes_in_one_group():
    torch.manual_seed(0)
    reference = [nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3, dtype=torch.float64)),
                 nn.Parameter(torch.randn(2, 2))]
    candidate = [nn.Parameter(p.detach().clone()) for p in reference]
    opts = (torch.optim.Adam(reference, lr=0.1, foreach=False), ft.Adam(candidate, lr=0.1))
    assert len(opts[1]._buckets[0]) == 2  # one flat buffer per dtype
    for step in range(5):
        for params, opt in zip((reference, candidate), opts):
            opt.zero_grad()
            sum((p ** 2).sum() * (i + 1) for i, p in enumerate(params)).backward()
            opt.step()
        for a, b in zip(reference, candidate):
            torch.testing.assert_close(b, a, **TOL[a.dtype])


def test_closure_and_tensor_lr():
    reference = make_model()
    candidate = copy.deepcopy(reference)
    batch = make_batch()
    opts = (torch.optim.SGD(reference.parameters(), lr=torch.tensor(0.1), foreach=False),
            ft.SGD(candidate.parameters(), lr=torch.tensor(0.1)))
    for step in range(5):
        losses = []
        for model, opt in zip((reference, candidate), opts):
            def closure():
                opt.zero_grad()
                return backward(model, batch)
            losses.append(opt.step(closure))
        assert losses[0].item() == losses[1].item()
        assert_same_params(reference, candidate, torch.float32, step)


def test_rmsprop_extras_match_fastopt_numpy_class():
    model = make_model()
    params = [p.detach().numpy().copy() for p in model.parameters()]
    numpy_opt = fastopt.RMSprop(params, lr=0.005, momentum=0.9, nesterov=True,
                                eps_in_sqrt=True)
    opt = ft.RMSprop(model.parameters(), lr=0.005, momentum=0.9, nesterov=True,
                     eps_in_sqrt=True)
    batch = make_batch()
    for _ in range(10):
        opt.zero_grad()
        backward(model, batch)
        numpy_opt.step([p.grad.numpy().copy() for p in model.parameters()])
        opt.step()
        for p, q in zip(model.parameters(), params):
            np.testing.assert_array_equal(p.detach().numpy(), q)  # same kernel, same bits


# --- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("tensor, what", [
    (torch.zeros(3, dtype=torch.float8_e4m3fn), "float8_e4m3fn"),
    (torch.zeros(3, dtype=torch.complex64), "complex64"),
    (torch.zeros(3).to_sparse(), "sparse_coo"),
    (torch.zeros(3, device="meta"), "meta"),
], ids=["float8", "complex64", "sparse", "non-cpu"])
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_unsupported_tensors_raise(name, tensor, what):
    good = nn.Parameter(torch.zeros(2))
    bad = tensor.requires_grad_() if tensor.is_floating_point() else tensor
    with pytest.raises(TypeError, match=rf"dense \(strided\) "
                                        rf"float32/float64/bfloat16/float16 CPU tensors; "
                                        rf"params\[1\] is .*{what}"):
        getattr(ft, name)([good, bad])
    assert good.data_ptr() != 0


def test_unsupported_gradient_raises_before_anything_is_written():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = ft.SGD([a, b], lr=0.1)
    a.grad = torch.ones(3)
    b.grad = torch.ones(3).to_sparse()
    with pytest.raises(TypeError, match=r"gradient of params\[1\] is a sparse_coo"):
        opt.step()
    assert torch.equal(a, torch.ones(3))


@pytest.mark.parametrize("call, error, match", [
    (lambda p: ft.Adam(p, lr=-1.0), ValueError, "Invalid lr"),
    (lambda p: ft.Adam(p, betas=(0.9, 1.0)), ValueError, "beta parameter at index 1"),
    (lambda p: ft.SGD(p, lr=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda p: ft.RMSprop(p, differentiable=True), ValueError, "differentiable"),
    (lambda p: ft.Adam(p, capturable=True), ValueError, "capturable"),
    (lambda p: ft.Adagrad(p, eps=-1.0), ValueError, "Invalid eps"),
    (lambda p: ft.SGD([]), ValueError, "empty parameter list"),
    (lambda p: ft.SGD(p, lr=lambda step: 0.1), TypeError, "lr_scheduler"),
    (lambda p: ft.Adam(p, lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-elem"),
    (lambda p: ft.SGD(p, lr=torch.tensor([])), ValueError, "Tensor lr must be 1-element"),
    (lambda p: ft.Adam(p, betas=(torch.tensor([0.9, 0.8]), 0.99)), ValueError,
     r"Tensor betas\[0\] must be 1-element"),
    (lambda p: ft.RMSprop(p, weight_decay=torch.ones(2)), ValueError,
     "Tensor weight_decay must be 1-element"),
])
def test_invalid_hyperparameters_raise(call, error, match):
    with pytest.raises(error, match=match):
        call([nn.Parameter(torch.zeros(2))] if "[]" not in match else [])


def test_bad_lr_from_a_scheduler_raises_at_step():
    model = make_model()
    opt = ft.Adam(model.parameters())
    backward(model, make_batch())
    opt.param_groups[0]["lr"] = -0.1
    with pytest.raises(ValueError, match="Invalid lr"):
        opt.step()


def test_replaced_param_storage_raises():
    model = make_model()
    opt = ft.SGD(model.parameters(), lr=0.1)
    model[0].weight.data = model[0].weight.detach().clone()
    backward(model, make_batch())
    with pytest.raises(RuntimeError, match="no longer lives in the optimizer's flat buffer"):
        opt.step()


def test_import_fastopt_does_not_import_torch():
    code = "import sys, fastopt; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pickling_the_optimizer_says_to_use_state_dict():
    opt = ft.Adam(make_model().parameters())
    with pytest.raises(TypeError, match="state_dict"):
        copy.deepcopy(opt)


@pytest.mark.parametrize("change", ["new value", "tensor changed in place", "list edited"])
def test_a_group_changed_between_steps_is_validated_again(change):
    """Steps reuse a group's validation while it holds the same immutable values; any
    change (a new value, a tensor or list edited in place) is checked at the next step."""
    param = nn.Parameter(torch.ones(4))
    opt = ft.Adam([param], lr=torch.tensor(0.1) if change.startswith("tensor") else 0.1,
                  betas=[0.9, 0.999] if change == "list edited" else (0.9, 0.999))
    for _ in range(2):
        param.grad = torch.ones(4)
        opt.step()
    before = param.detach().clone()
    group = opt.param_groups[0]
    if change == "new value":
        group["lr"] = -1.0
    elif change.startswith("tensor"):
        group["lr"].fill_(-1.0)
    else:
        group["betas"][0] = 1.5
    param.grad = torch.ones(4)
    with pytest.raises(ValueError):
        opt.step()
    assert torch.equal(param.detach(), before)


def test_step_hooks_and_profiler_range_as_torch():
    """fastopt.torch wraps step as torch.optim does (global and own pre-hooks, which may
    replace the arguments, then the post-hooks; a profiler range named as torch's), with
    torch's C range instead of record_function: the same observable sequence."""
    import torch.optim.optimizer as torch_optimizer
    from torch.profiler import profile

    def run(cls):
        params = [torch.nn.Parameter(torch.ones(4))]
        opt = cls(params, lr=0.1)
        seen = []
        opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", len(a))))
        opt.register_step_pre_hook(lambda o, a, k: (a, {**k, "closure": lambda: 7.0}))
        opt.register_step_post_hook(lambda o, a, k: seen.append(("post", sorted(k))))
        handle = torch_optimizer.register_optimizer_step_pre_hook(
            lambda o, a, k: seen.append(("global", type(o).__name__)))
        try:
            params[0].grad = torch.ones(4)
            with profile() as prof:
                loss = opt.step()
        finally:
            handle.remove()
        names = [e.name for e in prof.events() if e.name.startswith("Optimizer.step")]
        bad = cls([torch.nn.Parameter(torch.ones(1))], lr=0.1)
        bad.register_step_pre_hook(lambda o, a, k: "not a tuple")
        with pytest.raises(RuntimeError, match="must return None or a tuple"):
            bad.step()
        return seen, names, loss, params[0].detach()

    seen, names, loss, param = run(ft.Adam)
    want_seen, want_names, want_loss, want_param = run(torch.optim.Adam)
    assert seen == [("global", "Adam"), ("pre", 1), ("post", ["closure"])] == want_seen
    assert names == ["Optimizer.step#Adam.step"] == want_names
    assert loss == want_loss == 7.0
    torch.testing.assert_close(param, want_param)   # (a rounding apart: README)
