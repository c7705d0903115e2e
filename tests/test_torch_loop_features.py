"""fastopt.torch's loop options (clip_grad_norm, grad_scale, skip_if_nonfinite) and its
torch.amp.GradScaler integration, against torch's own idioms.

Tolerances as in test_torch_adapter.py (float32: rtol 1e-5, atol 1e-6; float64: rtol
1e-12, atol 1e-14): both sides compute the same update in a different order. Where the
two sides compute exactly the same arithmetic (a skipped step, a power-of-two loss scale
against unscaled gradients on the same class) the comparison is bitwise.
"""

import copy
import inspect

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import fastopt.torch as ft  # noqa: E402
from torch_models import make_batch, make_model  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.float64: dict(rtol=1e-12, atol=1e-14)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
CLASSES = {"SGD": dict(lr=0.05, momentum=0.9), "Adagrad": dict(lr=0.05),
           "RMSprop": dict(lr=0.005, momentum=0.9, centered=True), "Adam": dict(lr=0.01),
           "AdamW": dict(lr=0.01, amsgrad=True)}


def loss_of(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def two_groups(model, lr2):
    """Two param groups: first layer with the default lr, second with ``lr2``."""
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": lr2}]


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
             for i, p in enumerate(model.parameters()) if p in opt.state}
    return params, state


def assert_bitwise_equal(a, b):
    (params_a, state_a), (params_b, state_b) = a, b
    for x, y in zip(params_a, params_b):
        assert torch.equal(x, y)
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        assert state_a[i].keys() == state_b[i].keys()
        for k in state_a[i]:
            assert torch.equal(torch.as_tensor(state_a[i][k]), torch.as_tensor(state_b[i][k]))


def assert_same_params(reference, candidate, dtype, step):
    for (name, a), b in zip(reference.named_parameters(), candidate.parameters()):
        torch.testing.assert_close(b, a, **TOL[dtype], msg=lambda m: f"step {step}, {name}: {m}")


# --- clip_grad_norm ----------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("max_norm", [0.05, 1e6], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_clipping_equals_clip_grad_norm_then_torch_step(name, max_norm, dtype):
    options = CLASSES[name]
    reference = make_model(dtype)
    candidate = copy.deepcopy(reference)
    batch = make_batch(dtype)
    torch_opt = getattr(torch.optim, name)(two_groups(reference, 0.02), foreach=False,
                                           **options)
    fast_opt = getattr(ft, name)(two_groups(candidate, 0.02), clip_grad_norm=max_norm,
                                 **options)
    for step in range(20):
        for model, opt in ((reference, torch_opt), (candidate, fast_opt)):
            opt.zero_grad()
            loss_of(model, batch).backward()
        norm = nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
        torch_opt.step()
        fast_opt.step()
        assert not fast_opt.last_step_skipped
        assert fast_opt.last_grad_norm == pytest.approx(norm.item(), rel=TOL[dtype]["rtol"])
        if max_norm < 1:
            assert norm.item() > max_norm   # clipping is active on every step
        assert_same_params(reference, candidate, dtype, step)


def test_clip_norm_counts_exactly_the_gradients_stepped():
    """A param without a gradient is skipped, and so is its stale slot in the flat buffer."""
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=0.01, clip_grad_norm=1.0, skip_if_nonfinite=True)
    loss_of(model, make_batch()).backward()
    opt.step()
    bias = model[2].bias
    bias.grad.fill_(float("inf"))      # stale Inf in the flat gradient buffer ...
    bias.grad = None                   # ... of a param that has no gradient this step
    frozen = bias.detach().clone()
    opt.step()
    assert not opt.last_step_skipped
    want = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert opt.last_grad_norm == pytest.approx(want.double().norm().item(), rel=1e-6)
    assert torch.equal(bias, frozen)


# --- skip_if_nonfinite -------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_skipped_step_changes_nothing_and_training_continues(name, bad):
    """Step 3's gradient holds an Inf/NaN: nothing changes, bitwise; afterwards the run
    is bitwise the run that never saw that step."""
    batch = make_batch()
    models = [make_model(), make_model()]
    opts = [getattr(ft, name)(two_groups(m, 0.02), skip_if_nonfinite=True, **CLASSES[name])
            for m in models]
    for step in range(8):
        for k, (model, opt) in enumerate(zip(models, opts)):
            if step == 3 and k == 1:
                continue        # the reference never sees the bad step
            opt.zero_grad()
            loss_of(model, batch).backward()
            if step == 3:
                model[2].weight.grad[1, 2] = bad
                before = snapshot(model, opt)
                opt.step()
                assert opt.last_step_skipped
                assert not opt.last_grad_norm < float("inf")   # inf or nan
                assert_bitwise_equal(snapshot(model, opt), before)
                continue
            opt.step()
            assert not opt.last_step_skipped
        if step != 3:
            assert_bitwise_equal(snapshot(models[0], opts[0]), snapshot(models[1], opts[1]))


def test_without_skip_nonfinite_gradients_flow_through():
    model = make_model()
    opt = ft.SGD(model.parameters(), lr=0.1)
    loss_of(model, make_batch()).backward()
    model[0].bias.grad[0] = float("nan")
    opt.step()
    assert not opt.last_step_skipped and opt.last_grad_norm is None
    assert torch.isnan(model[0].bias[0])


# --- grad_scale --------------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam"])
def test_grad_scale_equals_dividing_the_gradients(name, dtype):
    """Loss multiplied by 1024 with grad_scale=1024 (then 512, set between steps): bitwise
    the run on the unscaled loss (powers of two: exact), and torch.optim's within TOL."""
    options, batch = CLASSES[name], make_batch(dtype)
    models = [make_model(dtype) for _ in range(3)]
    torch_opt = getattr(torch.optim, name)(models[0].parameters(), foreach=False, **options)
    plain = getattr(ft, name)(models[1].parameters(), **options)
    scaled = getattr(ft, name)(models[2].parameters(), grad_scale=1024.0, **options)
    for step in range(12):
        if step == 6:
            scaled.grad_scale = 512.0
        for model, opt in zip(models, (torch_opt, plain, scaled)):
            opt.zero_grad()
            factor = scaled.grad_scale if opt is scaled else 1.0
            (loss_of(model, batch) * factor).backward()
            opt.step()
        assert_same_params(models[0], models[1], dtype, step)
        for a, b in zip(models[1].parameters(), models[2].parameters()):
            assert torch.equal(a, b)


def test_grad_scale_and_clipping_use_the_unscaled_norm():
    batch = make_batch()
    models = [make_model(), make_model()]
    plain = ft.Adam(models[0].parameters(), lr=0.01, clip_grad_norm=0.05)
    scaled = ft.Adam(models[1].parameters(), lr=0.01, clip_grad_norm=0.05, grad_scale=256.0)
    for _ in range(5):
        loss_of(models[0], batch).backward()
        (loss_of(models[1], batch) * 256).backward()
        plain.step()
        scaled.step()
        plain.zero_grad()
        scaled.zero_grad()
        assert scaled.last_grad_norm == plain.last_grad_norm > 0.05
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


# --- torch.amp.GradScaler --------------------------------------------------------------

def amp_run(make_opt, steps=10, bad_step=4, unscale_and_clip=None, loss_factor=1.0):
    """A GradScaler training loop; at ``bad_step`` an Inf is put into one gradient.
    Returns the model, optimizer, and per step (params, scale after ``update``, step
    count, the norm of one gradient after ``scaler.step``, the scale that step used)."""
    model = make_model()
    batch = make_batch()
    opt = make_opt(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=3)
    history = []
    for step in range(steps):
        opt.zero_grad()
        scaler.scale(loss_of(model, batch) * loss_factor).backward()
        if step == bad_step:
            model[0].weight.grad[0, 0] = float("inf")
        if unscale_and_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), unscale_and_clip)
        scaler.step(opt)
        used, grad_norm = scaler.get_scale(), model[2].weight.grad.norm().item()
        scaler.update()
        history.append(([p.detach().clone() for p in model.parameters()], scaler.get_scale(),
                        opt.state[model[0].weight]["step"].item(), grad_norm, used))
    return model, opt, history


def compare_amp_runs(ours, theirs, bad_step=4, ours_grads=1.0):
    """``ours_grads``: our gradients after ``scaler.step`` over torch's, divided by the
    step's scale: fastopt folds ``1/scale`` into the update and leaves ``p.grad`` scaled
    (times a hand-applied loss factor), torch's fused Adam unscales it in place. After
    ``unscale_`` both hold the unscaled gradients: ``None``."""
    for step, (ours_step, theirs_step) in enumerate(zip(ours, theirs)):
        (p_ours, s_ours, t_ours, g_ours, used), (p_theirs, s_theirs, t_theirs, g_theirs, _) = (
            ours_step, theirs_step)
        assert s_ours == s_theirs
        # GradScaler left the unscaling to the optimizer (_step_supports_amp_scaling):
        # without unscale_, fastopt folds 1/scale into the update and p.grad stays scaled.
        if step != bad_step:
            want = g_theirs if ours_grads is None else ours_grads * used * g_theirs
            assert g_ours == pytest.approx(want, rel=1e-3)
        assert t_ours == t_theirs == step + (step < bad_step)    # one step skipped
        for a, b in zip(p_ours, p_theirs):
            torch.testing.assert_close(a, b, **TOL[torch.float32], msg=f"step {step}")
    # The bad step: both skipped (params bitwise unchanged), the scale halved.
    for a, b in zip(ours[bad_step - 1][0], ours[bad_step][0]):
        assert torch.equal(a, b)
    assert ours[bad_step][1] == ours[bad_step - 1][1] / 2


def test_grad_scaler_matches_fused_adam():
    """fused=True, as torch's: GradScaler hands the unscaling to step."""
    ours_model, ours, ours_hist = amp_run(lambda m: ft.Adam(m.parameters(), lr=0.01,
                                                            fused=True))
    _, _, theirs_hist = amp_run(lambda m: torch.optim.Adam(m.parameters(), lr=0.01, fused=True))
    compare_amp_runs(ours_hist, theirs_hist)
    # GradScaler's attributes are gone; the float option is untouched.
    assert ours.grad_scale == 1.0 and not hasattr(ours, "found_inf")
    assert not ours.last_step_skipped


@pytest.mark.parametrize("name", ["Adagrad", "RMSprop", "Adam", "AdamW"])  # with a step count
def test_grad_scaler_unfused_by_default_matches_torchs_unfused_class(name):
    """Without fused=True (torch's default), GradScaler unscales the gradients itself
    (in place) and skips step on Inf, as with torch's unfused classes: frameworks that
    clip unscaled gradients (Lightning) accept the optimizer."""
    options = CLASSES[name]
    assert not getattr(ft, name)(make_model().parameters(), **options)._step_supports_amp_scaling
    _, ours, ours_hist = amp_run(lambda m: getattr(ft, name)(m.parameters(), **options))
    _, _, theirs_hist = amp_run(
        lambda m: getattr(torch.optim, name)(m.parameters(), foreach=False, **options))
    compare_amp_runs(ours_hist, theirs_hist, ours_grads=None)
    assert ours.grad_scale == 1.0 and not hasattr(ours, "found_inf")


def test_grad_scaler_with_unscale_and_clip_grad_norm():
    """The usual clipping recipe: scaler.unscale_(opt); clip_grad_norm_; scaler.step(opt)."""
    _, ours, ours_hist = amp_run(lambda m: ft.Adam(m.parameters(), lr=0.01, fused=True),
                                 unscale_and_clip=0.05)
    _, _, theirs_hist = amp_run(
        lambda m: torch.optim.Adam(m.parameters(), lr=0.01, fused=True), unscale_and_clip=0.05)
    compare_amp_runs(ours_hist, theirs_hist, ours_grads=None)
    assert ours.grad_scale == 1.0 and not hasattr(ours, "found_inf")


def test_grad_scaler_combines_with_the_grad_scale_option():
    """The loss also multiplied by 8 by hand, with grad_scale=8.0: GradScaler passes the
    product of its scale and the option; the option survives the step."""
    _, ours, ours_hist = amp_run(
        lambda m: ft.Adam(m.parameters(), lr=0.01, grad_scale=8.0, fused=True), loss_factor=8.0)
    _, _, theirs_hist = amp_run(lambda m: torch.optim.Adam(m.parameters(), lr=0.01, fused=True))
    compare_amp_runs(ours_hist, theirs_hist, ours_grads=8.0)
    assert ours.grad_scale == 8.0 and not hasattr(ours, "found_inf")


def test_grad_scaler_attribute_protocol():
    model = make_model()
    opt = ft.SGD(model.parameters(), lr=0.1, grad_scale=2.0, fused=True)
    assert opt._step_supports_amp_scaling
    opt.grad_scale = torch.tensor(4.0)           # what GradScaler sets
    assert torch.is_tensor(opt.grad_scale)
    del opt.grad_scale                           # what GradScaler does after the step
    assert opt.grad_scale == 2.0
    del opt.grad_scale                           # harmless without a tensor set
    assert opt.grad_scale == 2.0
    loss_of(model, make_batch()).backward()
    before = snapshot(model, opt)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert opt.last_step_skipped
    assert_bitwise_equal(snapshot(model, opt), before)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert not opt.last_step_skipped
    for bad, error in ((torch.tensor(0.0), ValueError), (torch.tensor([1.0, 2.0]), ValueError),
                       (torch.tensor(float("inf")), ValueError)):
        opt.grad_scale = bad
        before = snapshot(model, opt)
        with pytest.raises(error, match="grad_scale"):
            opt.step()
        assert_bitwise_equal(snapshot(model, opt), before)
        del opt.grad_scale


def test_grad_scale_none_as_grad_scaler_sets_it_leaves_the_option():
    """GradScaler sets ``grad_scale = None`` on a fused optimizer whose gradients it has
    already unscaled (torch before 2.6 always; torch.optim's fused classes read None as
    "no scale"), and ``found_inf``; it deletes both after the step. That used to
    overwrite the float option with None and break every later step."""
    model, batch = make_model(), make_batch()
    opt = ft.SGD(model.parameters(), lr=0.1, grad_scale=2.0, fused=True)
    reference = ft.SGD(make_model().parameters(), lr=0.1, grad_scale=2.0)
    for step in range(3):
        opt.zero_grad()
        reference.zero_grad()
        loss_of(model, batch).backward()
        for p, q in zip(model.parameters(), reference.param_groups[0]["params"]):
            q.grad = p.grad.clone()
        opt.grad_scale, opt.found_inf = None, torch.tensor(0.0)   # what GradScaler sets
        assert opt.grad_scale == 2.0
        opt.step()
        del opt.grad_scale, opt.found_inf
        reference.step()
        assert opt.grad_scale == 2.0
        for p, q in zip(model.parameters(), reference.param_groups[0]["params"]):
            assert torch.equal(p, q)   # the option (2.0) applied, as without GradScaler
    opt.grad_scale, opt.found_inf = None, torch.tensor(1.0)
    before = snapshot(model, opt)
    opt.step()
    assert opt.last_step_skipped
    assert_bitwise_equal(snapshot(model, opt), before)


# --- options: signatures and validation --------------------------------------------------

@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_class_takes_the_loop_options(name):
    cls = getattr(ft, name)
    parameters = inspect.signature(cls).parameters
    for key, default in (("clip_grad_norm", None), ("grad_scale", 1.0),
                         ("skip_if_nonfinite", False)):
        assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[key].default == default
    torch_names = list(inspect.signature(getattr(torch.optim, name)).parameters)
    assert [k for k in parameters if k in torch_names] == torch_names
    opt = cls(make_model().parameters(), clip_grad_norm=1.0, grad_scale=2.0,
              skip_if_nonfinite=True)
    assert (opt.clip_grad_norm, opt.grad_scale, opt.skip_if_nonfinite) == (1.0, 2.0, True)
    assert opt.last_step_skipped is False and opt.last_grad_norm is None


BAD = [({"clip_grad_norm": 0.0}, ValueError), ({"clip_grad_norm": -1.0}, ValueError),
       ({"clip_grad_norm": float("nan")}, ValueError), ({"clip_grad_norm": "1"}, TypeError),
       ({"grad_scale": 0.0}, ValueError), ({"grad_scale": float("inf")}, ValueError),
       ({"grad_scale": "1"}, TypeError), ({"grad_scale": None}, TypeError),
       ({"skip_if_nonfinite": 1}, TypeError), ({"skip_if_nonfinite": None}, TypeError)]


@pytest.mark.parametrize("options, error", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_loop_options(options, error):
    (name,) = options
    model = make_model()
    addresses = [p.data_ptr() for p in model.parameters()]
    with pytest.raises(error, match=name):
        ft.Adam(model.parameters(), **options)
    # Raised before the params were moved into flat buffers.
    assert [p.data_ptr() for p in model.parameters()] == addresses
    opt = ft.Adam(model.parameters(), lr=0.01)
    loss_of(model, make_batch()).backward()
    opt.step()
    if options == {"grad_scale": None}:
        return   # as an attribute, None is GradScaler's "no scale" (test above)
    setattr(opt, name, options[name])
    before = snapshot(model, opt)
    with pytest.raises(error, match=name):
        opt.step()
    assert_bitwise_equal(snapshot(model, opt), before)


@pytest.mark.parametrize("name, bad, error", [
    ("clip_grad_norm", -1.0, ValueError), ("grad_scale", float("nan"), ValueError),
    ("skip_if_nonfinite", "yes", TypeError)])
def test_a_loop_option_set_bad_between_steps_is_refused_writing_nothing(name, bad, error):
    """The step re-checks the loop options only when one is another object than at its
    last check: a bad value set after steps with good ones is still refused, before
    anything is written."""
    model, batch = make_model(), make_batch()
    opt = ft.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    setattr(opt, name, bad)
    opt.zero_grad()
    loss_of(model, batch).backward()
    before = snapshot(model, opt)
    with pytest.raises(error, match=name):
        opt.step()
    assert_bitwise_equal(snapshot(model, opt), before)
