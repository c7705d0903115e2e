"""The NumPy front end's steady step (``fastopt/optim/steady.py``): a ``flatten()`` loop's
``opt.step()`` repeats the last step's plan. It must give bitwise what the full step gives,
through everything a loop may change between steps, fall back to the full step whenever
the plan no longer holds, and refuse what the full step refuses, writing nothing."""

import threading

import numpy as np
import pytest

import fastopt
from cases import MATRIX, RULES
from fastopt.rules import RULES as REGISTRY

SHAPES = [(7,), (3, 4), (5,)]


def _flat(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return fastopt.flatten([rng.standard_normal(s).astype(dtype) for s in SHAPES])


def _counting_full_steps(opt):
    """Count ``opt``'s full steps (the steady ones do not call ``_step``)."""
    full = opt._step
    opt.full_steps = 0

    def counted(*args, **kwargs):
        opt.full_steps += 1
        return full(*args, **kwargs)
    opt._step = counted
    return opt


def _events(opt, t):
    """What a training loop may do to ``opt`` before step ``t`` (the same for both
    optimizers compared); returns the step's ``zero_grad``."""
    group = opt.param_groups[0]
    if t == 6:
        group["lr"] = group["lr"] * 0.5           # a value replaced
    if t == 9:
        group["maximize"] = not group["maximize"]
    if t == 11:
        group["maximize"] = not group["maximize"]
    if t == 13:
        opt.grad_scale = 4.0                      # a loss scale
    if t == 16:
        opt.clip_grad_norm = 0.5                  # the norm pass: full steps
    if t == 19:
        opt.clip_grad_norm = None
    if t == 22:
        opt.load_state_dict(opt.state_dict())     # new state buffers
    if t == 25:
        lr = group["lr"]
        group["lr"] = lambda step: lr * 0.9       # a schedule: full steps
    if t == 28:
        group["lr"] = 0.5 * MATRIX[_name(opt)][0]
    return t in (9, 10, 30)                       # zero_grad now and then


def _name(opt):
    return opt.rule.name


def _train(name, dtype, combo, steady, steps=36, **extra):
    cls, _, lr = RULES[name]
    flat = _flat(dtype)
    opt = _counting_full_steps(cls(flat, lr=lr, **combo, **extra))
    rng = np.random.default_rng(1)
    for t in range(1, steps + 1):
        zero_grad = _events(opt, t)
        for grad in flat.grads:
            grad[...] = rng.standard_normal(grad.shape).astype(dtype) * 0.3
        if not steady:
            opt._steady = None                    # every step plans afresh
        opt.step(zero_grad=zero_grad)
        if zero_grad:
            assert all(not g.any() for g in flat.grads)
    return flat, opt


def _assert_same(a, b):
    (flat_a, opt_a), (flat_b, opt_b) = a, b
    for x, y in zip(flat_a.params, flat_b.params):
        assert x.tobytes() == y.tobytes()
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        assert state_a[index].keys() == state_b[index].keys()
        for key, value in state_a[index].items():
            assert np.asarray(value).tobytes() == np.asarray(state_b[index][key]).tobytes(), \
                (index, key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(name, combo) for name, (_, combos) in MATRIX.items()
                                  for combo in (combos[0], combos[-1])],
                         ids=lambda c: c[0] + ("" if not c[1] else "-options"))
def test_steady_steps_are_the_full_steps_bitwise(case, dtype):
    name, combo = case
    steady = _train(name, dtype, combo, steady=True)
    full = _train(name, dtype, combo, steady=False)
    _assert_same(steady, full)
    assert full[1].full_steps == 36
    # steady from step 3 (step 1 creates the state, step 2 the scalars ahead), but for
    # the steps after a change (and all steps with a clip or a schedule)
    assert steady[1].full_steps <= 18, steady[1].full_steps


def test_bfloat16_state_and_half_params_step_steadily_bitwise():
    pytest.importorskip("ml_dtypes")
    for dtype, extra in ((np.float32, {"state_dtype": "bfloat16"}), (np.float16, {})):
        steady = _train("adam", dtype, {}, steady=True, **extra)
        full = _train("adam", dtype, {}, steady=False, **extra)
        _assert_same(steady, full)
        assert steady[1].full_steps <= 18


def _steady_adam(planned=True, **options):
    flat = _flat(np.float32)
    opt = _counting_full_steps(fastopt.Adam(flat, lr=0.01, **options))
    for grad in flat.grads:
        grad[...] = 0.1
    for _ in range(4):
        opt.step()
    assert (opt._steady is not None) == planned
    return flat, opt


def _snapshot(flat, opt):
    return [p.copy() for p in flat.params], opt.state_dict()


def _assert_unchanged(flat, opt, before):
    params, state = before
    for p, q in zip(flat.params, params):
        assert p.tobytes() == q.tobytes()
    now = opt.state_dict()["state"]
    for index, entry in state["state"].items():
        for key, value in entry.items():
            assert np.asarray(now[index][key]).tobytes() == np.asarray(value).tobytes()


def test_steady_steps_skip_planning_and_count_steps():
    flat, opt = _steady_adam()
    before = opt.full_steps
    for _ in range(10):
        opt.step()
    assert opt.full_steps == before            # ten steps, none planned afresh
    assert opt.state_dict()["state"][0]["step"] == 14
    assert opt.last_grad_norm is None and opt.last_step_skipped is False


@pytest.mark.parametrize("change, error", [
    (lambda opt: opt.param_groups[0].__setitem__("lr", -1.0), "lr"),
    (lambda opt: opt.param_groups[0].__setitem__("betas", (0.9, 1.5)), "beta"),
    (lambda opt: opt.param_groups[0].__setitem__("eps", "small"), "eps"),
    (lambda opt: setattr(opt, "grad_scale", 0.0), "grad_scale"),
    (lambda opt: setattr(opt, "clip_grad_norm", -1.0), "clip_grad_norm"),
    (lambda opt: setattr(opt, "skip_if_nonfinite", "yes"), "skip_if_nonfinite"),
    (lambda opt: opt.param_groups[0].__setitem__("amsgrad", 1), "amsgrad"),
])
def test_a_bad_value_set_between_steady_steps_is_refused_with_nothing_written(change, error):
    flat, opt = _steady_adam()
    before = _snapshot(flat, opt)
    change(opt)
    with pytest.raises((TypeError, ValueError), match=error):
        opt.step()
    _assert_unchanged(flat, opt, before)
    assert opt.state_dict()["state"][0]["step"] == 4


def test_a_replaced_group_dict_is_planned_afresh():
    flat, opt = _steady_adam()
    opt.param_groups[0] = {**opt.param_groups[0], "lr": 0.5}
    before = opt.full_steps
    opt.step()
    assert opt.full_steps == before + 1


def test_an_edited_list_value_is_seen():
    """A list value may be edited in place: no plan is made while a group holds one."""
    flat, opt = _steady_adam(planned=False, betas=[0.9, 0.999])
    opt.param_groups[0]["betas"][1] = 2.0
    with pytest.raises(ValueError, match="beta"):
        opt.step()


def test_a_concurrent_steady_step_is_refused_with_nothing_written():
    flat, opt = _steady_adam()
    before = _snapshot(flat, opt)
    opt._twins._busy.acquire()                   # as if another thread were inside step
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            opt.step()
        _assert_unchanged(flat, opt, before)
    finally:
        opt._twins._busy.release()
    opt.step()
    assert opt.state_dict()["state"][0]["step"] == 5


def test_zero_grad_on_a_read_only_gradient_is_refused():
    flat, opt = _steady_adam()
    opt.step(zero_grad=True)                      # a plan with zero_grad
    for grad in flat.grads:
        grad[...] = 0.1
    opt.step(zero_grad=True)
    assert opt._steady is not None and opt._steady.zero_grad
    # the gradient views the optimizer reads (its own, made at construction: a user's
    # flag on flat.grads or on the buffer does not reach them) turned read-only
    for view in opt._own_views:
        view.flags.writeable = False
    before = _snapshot(flat, opt)
    with pytest.raises(ValueError, match="read-only"):
        opt.step(zero_grad=True)
    _assert_unchanged(flat, opt, before)


class _FailsAt(type(REGISTRY["sgd"])):
    """SGD whose scalars raise at one step (not registered: no ``name`` of its own)."""

    def step_scalars(self, group, t):
        return None   # (its scalars read the step)

    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def scalars(self, group, t, fresh):
        if t == self.bad:
            raise ValueError(f"Invalid lr at step {t}")
        return super().scalars(group, t, fresh)


def test_a_later_step_whose_scalars_fail_raises_before_writing():
    class FailingSGD(fastopt.SGD):
        rule = _FailsAt(12)

    flat = _flat(np.float32)
    opt = _counting_full_steps(FailingSGD(flat, lr=0.1, momentum=0.9))
    for grad in flat.grads:
        grad[...] = 0.1
    for _ in range(11):
        opt.step()
    assert opt.full_steps < 11                    # steady before the failing step
    before = _snapshot(flat, opt)
    with pytest.raises(ValueError, match="step 12"):
        opt.step()
    _assert_unchanged(flat, opt, before)
    assert opt._work[0][1].step == 11


def _train_sines(key):
    """200 Adam steps on gradients sin(t + key); the first param after them."""
    flat = _flat(np.float32, seed=key)
    opt = fastopt.Adam(flat, lr=0.01)
    for t in range(200):
        for grad in flat.grads:
            grad[...] = np.sin(t + key)
        opt.step()
    return flat.params[0].copy()


def test_two_threads_each_with_their_own_optimizer_step_steadily():
    results = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, _train_sines(k)))
               for k in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for key in (1, 2):
        assert results[key].tobytes() == _train_sines(key).tobytes()


@pytest.mark.parametrize("write", [
    lambda g: g.__setitem__("lr", 0.5),
    lambda g: g.update(lr=0.5),
    lambda g: g.__ior__({"lr": 0.5}),
    lambda g: (g.pop("lr"), g.__setitem__("lr", 0.5)),
    lambda g: g.setdefault("lr", 0.5),
    lambda g: (g.__delitem__("lr"), g.__setitem__("lr", 0.5)),
])
def test_every_write_to_a_param_group_is_seen_by_the_next_step(write):
    """A write through any dict method bumps the group's version: the step plans afresh
    and uses the new value (setdefault of a present key changes nothing, but counts)."""
    flat, opt = _steady_adam()
    group = opt.param_groups[0]
    assert type(group) is fastopt.optim.steady.ParamGroup and isinstance(group, dict)
    version, before = group.version, opt.full_steps
    write(group)
    assert group.version > version
    opt.step()
    assert opt.full_steps == before + 1
    assert group["lr"] == (0.01 if write.__code__.co_names == ("setdefault",) else 0.5)


def test_param_groups_are_dicts_that_copy_and_pickle_and_count_writes():
    import copy
    import pickle
    flat, opt = _steady_adam()
    group = opt.param_groups[0]
    group["lr"] = 0.02
    for clone in (copy.deepcopy(group), pickle.loads(pickle.dumps(group))):
        assert type(clone) is type(group) and clone.keys() == group.keys()
        assert all(clone[k] == group[k] for k in group if k != "params")
        version = clone.version
        clone["lr"] = 0.03
        assert clone.version == version + 1 and group["lr"] == 0.02
    assert all(type(g) is dict for g in opt.state_dict()["param_groups"])


@pytest.mark.parametrize("name", ["adam", "sgd", "lamb"])
def test_steady_steps_above_the_parallel_threshold_are_the_full_steps(name, monkeypatch):
    """Above ``PARALLEL_THRESHOLD`` a steady step enters the twin choice (serial or
    parallel twin, by the loop probe) as the full step does, and runs through the
    variant: bitwise the full steps, the plan still repeated."""
    from fastopt.kernels import config
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 8)
    steady = _train(name, np.float32, {}, steady=True, steps=80)
    full = _train(name, np.float32, {}, steady=False, steps=80)
    _assert_same(steady, full)
    assert steady[1].full_steps < 40
