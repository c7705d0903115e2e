"""fastopt.checkpoint: safetensors save/load, no pickle, atomic writes, every mismatch and
every damaged file a ValueError that leaves the optimizer (and the params) unchanged."""

import hashlib
import json
import os
import pickle
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt
from cases import MATRIX
from fastopt.rules import RULES as REGISTRY
from fastopt import schedules
from fastopt.checkpoint import load, save

safetensors_numpy = pytest.importorskip("safetensors.numpy")

SHAPES = [(5, 3), (4,), ()]

RULES = {
    "sgd-momentum": (fastopt.SGD, dict(lr=0.05, momentum=0.9)),
    "adagrad": (fastopt.Adagrad, dict(lr=0.05, lr_decay=0.01)),
    "rmsprop-centered-momentum": (fastopt.RMSprop, dict(lr=0.01, centered=True,
                                                         momentum=0.9)),
    "adam-amsgrad": (fastopt.Adam, dict(lr=0.01, amsgrad=True)),
    "adamw": (fastopt.AdamW, dict(lr=0.01, weight_decay=0.1)),
}
#: Every other rule of the registry, with the last option combination of its test matrix.
RULES.update({name: (fastopt.optim.CLASSES[REGISTRY[name].class_name],
                     dict(combos[-1], lr=lr))
              for name, (lr, combos) in MATRIX.items() if name not in RULES})


def make_params(dtype=np.float64, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def make_grads(dtype, steps, seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def trained(rule="adam-amsgrad", dtype=np.float64, steps=3):
    cls, options = RULES[rule]
    params = make_params(dtype)
    opt = cls(params, **options)
    for g in make_grads(dtype, steps):
        opt.step(g)
    return opt, params


def assert_same_state(a, b):
    """Two state_dict() snapshots are identical: steps, buffers (bitwise), groups."""
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        ea, eb = a["state"][index], b["state"][index]
        assert ea.keys() == eb.keys()
        for name in ea:
            np.testing.assert_array_equal(ea[name], eb[name])
            assert np.asarray(ea[name]).dtype == np.asarray(eb[name]).dtype


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", RULES)
def test_round_trip_continues_bitwise(rule, dtype, tmp_path):
    """5 steps, save, a new optimizer on copies of the params, load, 5 more steps on
    both: params and state bitwise equal."""
    cls, options = RULES[rule]
    grads = make_grads(dtype, 10)
    params = make_params(dtype)
    opt = cls(params, **options)
    for g in grads[:5]:
        opt.step(g)
    save(opt, tmp_path / "opt.safetensors")
    copies = [p.copy() for p in params]
    resumed = cls(copies, lr=0.5)  # other hyperparameters: the checkpoint's must win
    load(resumed, tmp_path / "opt.safetensors")
    assert_same_state(resumed.state_dict(), opt.state_dict())
    for g in grads[5:]:
        opt.step(g)
        resumed.step(g)
    for a, b in zip(copies, params):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert_same_state(resumed.state_dict(), opt.state_dict())
    assert resumed.state_dict()["state"][0]["step"] == 10


def test_round_trip_flat_param_groups_and_fresh_optimizer(tmp_path):
    """flatten() views in two param groups with their own lr; an optimizer that has not
    stepped yet saves and loads too (empty state)."""
    flat = fastopt.flatten(make_params(np.float32))
    w, b, s = flat.params
    opt = fastopt.Adam([{"params": [w, b]}, {"params": [s], "lr": 0.1}], betas=(0.8, 0.9))
    save(opt, tmp_path / "empty.safetensors")
    other = fastopt.Adam([{"params": [w.copy(), b.copy()]}, {"params": [s.copy()]}])
    load(other, tmp_path / "empty.safetensors")
    assert other.state_dict() == opt.state_dict()  # no arrays in an empty state
    assert other.param_groups[0]["betas"] == (0.8, 0.9)  # a tuple again, not a list
    for g in make_grads(np.float32, 2):
        opt.step(g)
    save(opt, tmp_path / "opt.safetensors")
    load(other, tmp_path / "opt.safetensors")
    assert_same_state(other.state_dict(), opt.state_dict())
    assert other.param_groups[1]["lr"] == 0.1


def test_params_true_restores_params_in_place(tmp_path):
    opt, params = trained("rmsprop-centered-momentum", np.float32)
    save(opt, tmp_path / "run.safetensors", params=True)
    expected = [p.copy() for p in params]
    for g in make_grads(np.float32, 2, seed=7):  # wander off, then come back
        opt.step(g)
    targets = [p for p in params]
    load(opt, tmp_path / "run.safetensors")
    for target, p, want in zip(targets, params, expected):
        assert target is p  # in place: the user's arrays, not new ones
        np.testing.assert_array_equal(p, want)
    assert opt.state_dict()["state"][0]["step"] == 3

    fresh = [np.zeros_like(p) for p in params]
    other = fastopt.RMSprop(fresh, centered=True, momentum=0.9)
    load(other, tmp_path / "run.safetensors")
    for p, want in zip(fresh, expected):
        np.testing.assert_array_equal(p, want)


def test_without_params_the_params_are_untouched(tmp_path):
    opt, params = trained()
    save(opt, tmp_path / "opt.safetensors")
    zeros = [np.zeros_like(p) for p in params]
    load(fastopt.Adam(zeros, amsgrad=True), tmp_path / "opt.safetensors")
    assert all(not p.any() for p in zeros)


# --- the file: safetensors, no pickle -------------------------------------------------


def test_file_is_plain_safetensors_with_documented_names(tmp_path):
    opt, _ = trained("adam-amsgrad", np.float32)
    path = tmp_path / "opt.safetensors"
    save(opt, path, params=True)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    assert 8 + length <= len(data)
    header = json.loads(data[8:8 + length])  # strict JSON, no pickle opcodes
    assert data[8:9] == b"{"
    assert b"\x80\x04" not in data[:8 + length]  # pickle protocol 4 marker
    meta = header["__metadata__"]
    assert meta["format"] == "fastopt.checkpoint"
    assert meta["format_version"] == "1"
    assert meta["rule"] == "Adam"
    assert meta["params"] == "true"
    assert json.loads(meta["steps"]) == {"0": 3, "1": 3, "2": 3}
    groups = json.loads(meta["param_groups"])
    assert groups[0]["amsgrad"] is True and groups[0]["params"] == [0, 1, 2]
    assert meta["checksum"].startswith("sha256:")
    names = {k for k in header if k != "__metadata__"}
    assert names == {f"state/{i}/{n}" for i in range(3)
                     for n in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")} | {
                         f"params/{i}" for i in range(3)}
    # any safetensors reader reads it
    tensors = safetensors_numpy.load(data)
    np.testing.assert_array_equal(tensors["state/1/exp_avg"], opt.state[1]["exp_avg"])
    assert tensors["state/0/exp_avg"].dtype == np.float32
    assert tensors["state/2/exp_avg_sq"].shape == ()


def test_loading_never_calls_pickle(tmp_path, monkeypatch):
    opt, params = trained()
    save(opt, tmp_path / "opt.safetensors", params=True)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle was called")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    other = fastopt.Adam([p.copy() for p in params], amsgrad=True)
    load(other, tmp_path / "opt.safetensors")
    save(other, tmp_path / "again.safetensors")
    assert_same_state(other.state_dict(), opt.state_dict())


def test_checkpoint_module_does_not_use_pickle():
    import fastopt.checkpoint as module

    source = open(module.__file__).read()
    for banned in ("import pickle", "allow_pickle", "np.save(", "np.load(", "torch.save",
                   "torch.load"):
        assert banned not in source


def test_missing_safetensors_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    opt, _ = trained()
    with pytest.raises(ImportError, match=r"pip install fastopt\[checkpoint\]"):
        save(opt, tmp_path / "x.safetensors")
    with pytest.raises(ImportError, match=r"pip install fastopt\[checkpoint\]"):
        load(opt, tmp_path / "x.safetensors")
    assert not os.listdir(tmp_path)


# --- atomic writes ----------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_failed_save_keeps_old_file_and_no_temp_files(failing, tmp_path, monkeypatch):
    opt, params = trained(steps=2)
    path = tmp_path / "opt.safetensors"
    save(opt, path)
    old_bytes, old_state = path.read_bytes(), opt.state_dict()
    for g in make_grads(np.float64, 3, seed=5):
        opt.step(g)

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    if failing == "write":  # fail after part of the data went out
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, file):
                self.file = file

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, chunk):
                self.file.write(bytes(chunk)[: len(chunk) // 2])
                raise OSError("disk full")

        monkeypatch.setattr(os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError):
        save(opt, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["opt.safetensors"]  # no temp file left
    assert path.read_bytes() == old_bytes
    other = fastopt.Adam([p.copy() for p in params], amsgrad=True)
    load(other, path)
    assert_same_state(other.state_dict(), old_state)


def test_save_replaces_file_and_keeps_its_mode(tmp_path):
    opt, _ = trained(steps=1)
    path = tmp_path / "opt.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    save(opt, str(path))  # str or PathLike
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert path.read_bytes()[8:9] == b"{"
    assert os.listdir(tmp_path) == ["opt.safetensors"]


# --- mismatches ------------------------------------------------------------------------


def check_rejected(opt, path, match, params=None):
    """load raises ValueError matching ``match``; state and params unchanged."""
    before = opt.state_dict()
    before_params = [p.copy() for p in params] if params is not None else None
    with pytest.raises(ValueError, match=match):
        load(opt, path)
    assert_same_state(opt.state_dict(), before)
    if params is not None:
        for p, q in zip(params, before_params):
            np.testing.assert_array_equal(p, q)


def test_other_rule_is_rejected(tmp_path):
    opt, params = trained("adam-amsgrad")
    save(opt, tmp_path / "adam.safetensors")
    sgd = fastopt.SGD([p.copy() for p in params], momentum=0.9)
    for g in make_grads(np.float64, 2):
        sgd.step(g)
    check_rejected(sgd, tmp_path / "adam.safetensors", "checkpoint .* is for Adam, "
                   "optimizer is SGD")
    adamw = fastopt.AdamW([p.copy() for p in params])
    check_rejected(adamw, tmp_path / "adam.safetensors", "is for Adam, optimizer is AdamW")


@pytest.mark.parametrize("model, match", [
    ([(5, 3), (4,)], "param group 0 has 3 params, the optimizer's has 2"),
    ([(5, 3), (4,), (), (2,)], "group 0 has 3 params, the optimizer's has 4"),
    ([(3, 5), (4,), ()], r"shape \(5, 3\) and dtype float64, params\[0\] has shape "
                         r"\(3, 5\)"),
    ([(5, 3), (5,), ()], r"params\[1\] has shape \(5,\)"),
])
def test_other_model_is_rejected(model, match, tmp_path):
    opt, _ = trained("adam-amsgrad")
    save(opt, tmp_path / "opt.safetensors", params=True)
    params = make_params(np.float64, seed=3, shapes=model)
    other = fastopt.Adam(params, amsgrad=True)
    for g in make_grads(np.float64, 2, shapes=model):
        other.step(g)
    check_rejected(other, tmp_path / "opt.safetensors", match, params)


def test_other_dtype_and_group_count_are_rejected(tmp_path):
    opt, params = trained("adam-amsgrad", np.float64)
    save(opt, tmp_path / "opt.safetensors", params=True)
    other_params = [p.astype(np.float32) for p in params]
    other = fastopt.Adam(other_params, amsgrad=True)
    check_rejected(other, tmp_path / "opt.safetensors",
                   "dtype float64, params.0. has shape .* and dtype float32", other_params)
    split = [p.copy() for p in params]
    grouped = fastopt.Adam([{"params": split[:1]}, {"params": split[1:]}], amsgrad=True)
    check_rejected(grouped, tmp_path / "opt.safetensors",
                   "has 1 param groups, the optimizer has 2", split)


def test_other_options_are_caught_by_load_state_dict(tmp_path):
    """Same rule, other options (no amsgrad in the file): the checkpoint's hyperparameters
    are loaded with its state, so the optimizer takes them; nothing half-written."""
    cls, _ = RULES["adam-amsgrad"]
    opt, params = trained("adam-amsgrad")
    plain = cls([p.copy() for p in params])
    save(plain, tmp_path / "plain.safetensors")  # no state yet, amsgrad=False
    load(opt, tmp_path / "plain.safetensors")
    assert opt.param_groups[0]["amsgrad"] is False and opt.state_dict()["state"] == {}


def write_with_metadata(path, source, **changes):
    """Rewrite ``source`` with metadata entries changed (no valid checksum needed for the
    checks that come before it)."""
    data = source.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    tensors = safetensors_numpy.load(data)
    meta = {**header["__metadata__"], **changes}
    path.write_bytes(safetensors_numpy.save(tensors, metadata=meta))


def test_unknown_format_version_is_rejected(tmp_path):
    opt, params = trained()
    save(opt, tmp_path / "opt.safetensors")
    write_with_metadata(tmp_path / "v99.safetensors", tmp_path / "opt.safetensors",
                        format_version="99")
    for g in make_grads(np.float64, 2, seed=4):
        opt.step(g)
    check_rejected(opt, tmp_path / "v99.safetensors", "format version '99'; this fastopt "
                   r"reads version\(s\) \['1'\]", params)


def test_foreign_safetensors_file_is_rejected(tmp_path):
    opt, params = trained()
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_numpy.save({"weight": np.zeros(3)}))
    check_rejected(opt, path, "corrupt or truncated checkpoint .*not a file written by "
                   "fastopt.save", params)


def test_edited_metadata_fails_the_checksum(tmp_path):
    opt, params = trained()
    save(opt, tmp_path / "opt.safetensors")
    data = (tmp_path / "opt.safetensors").read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    groups = json.loads(header["__metadata__"]["param_groups"])
    groups[0]["lr"] = 0.5
    write_with_metadata(tmp_path / "edited.safetensors", tmp_path / "opt.safetensors",
                        param_groups=json.dumps(groups))
    check_rejected(opt, tmp_path / "edited.safetensors", "checksum mismatch", params)


def fresh_target(dtype=np.float32):
    """An optimizer (different state) and params that a damaged file must not touch."""
    params = make_params(dtype, seed=9)
    opt = fastopt.Adam(params, amsgrad=True)
    for g in make_grads(dtype, 2, seed=8):
        opt.step(g)
    return opt, params


def forge(path, source, tensors=None, **changes):
    """Rewrite ``source`` with metadata entries changed (``None`` removes one) and,
    optionally, other tensors, and a correct checksum: what a hostile user can make."""
    data = source.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    tensors = safetensors_numpy.load(data) if tensors is None else tensors
    placeholder = ("sha256:" + "0" * 64).encode()
    meta = {k: v for k, v in {**header["__metadata__"], **changes}.items() if v is not None}
    meta["checksum"] = placeholder.decode()
    blob = safetensors_numpy.save(tensors, metadata=meta)
    digest = ("sha256:" + hashlib.sha256(blob).hexdigest()).encode()
    assert blob.count(placeholder) == 1
    path.write_bytes(blob.replace(placeholder, digest))
    return path


def metadata_of(path):
    data = path.read_bytes()
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]


def test_forge_helper_makes_loadable_files(tmp_path):
    """The forged files below fail for what they change, not for their checksum."""
    opt, params = trained()
    save(opt, tmp_path / "opt.safetensors")
    forge(tmp_path / "same.safetensors", tmp_path / "opt.safetensors")
    other = fastopt.Adam([p.copy() for p in params], amsgrad=True)
    load(other, tmp_path / "same.safetensors")
    assert_same_state(other.state_dict(), opt.state_dict())


def forged_json(source, key, edit):
    """``metadata[key]`` of ``source`` as JSON, after ``edit(value)`` changed it."""
    value = json.loads(metadata_of(source)[key])
    edit(value)
    return json.dumps(value)


FORGED_STATE = {
    # JSON state values must not stand in for arrays or steps, nor override a tensor
    "list-over-a-tensor": lambda src: dict(state_values=json.dumps(
        {"1": {"exp_avg": [0.5] * 4}})),
    "number-for-a-0-d-buffer": lambda src: dict(
        tensors={k: v for k, v in safetensors_numpy.load(src.read_bytes()).items()
                 if k != "state/2/exp_avg"},
        state_values=json.dumps({"2": {"exp_avg": 0.5}})),
    "step-in-state-values": lambda src: dict(state_values=json.dumps({"0": {"step": 9}})),
    # numbers beyond float range: ValueError, not OverflowError
    "huge-step": lambda src: dict(steps=json.dumps({"0": 10 ** 400, "1": 3, "2": 3})),
    "huge-lr": lambda src: dict(param_groups=forged_json(
        src, "param_groups", lambda g: g[0].__setitem__("lr", 10 ** 400))),
    "huge-beta": lambda src: dict(param_groups=forged_json(
        src, "param_groups", lambda g: g[0].__setitem__("betas", [10 ** 400, 0.9]))),
    "fractional-step": lambda src: dict(steps=json.dumps({"0": 2.5, "1": 3, "2": 3})),
}


@pytest.mark.parametrize("case", FORGED_STATE)
def test_forged_state_values_are_refused(case, tmp_path):
    opt, params = trained()
    save(opt, tmp_path / "opt.safetensors")
    changes = FORGED_STATE[case](tmp_path / "opt.safetensors")
    path = forge(tmp_path / "forged.safetensors", tmp_path / "opt.safetensors", **changes)
    target, target_params = fresh_target(np.float64)
    check_rejected(target, path, r"step|lr|beta|state_values|state\[2\]", target_params)


# --- schedules and loop options ----------------------------------------------------------

SCHEDULES = [
    schedules.constant(0.01),
    schedules.step_decay(0.02, step_size=3, gamma=0.5),
    schedules.exponential(0.01, gamma=0.9),
    schedules.cosine(3e-3, total_steps=10, warmup_steps=2, min_lr=1e-4),
    schedules.warmup_linear_decay(0.01, warmup_steps=3, total_steps=9, end_factor=0.1),
    schedules.one_cycle(0.05, total_steps=12, anneal_strategy="linear", three_phase=True),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedule_and_loop_options_round_trip(schedule, tmp_path):
    """The README's loop (a schedule, clip_grad_norm, grad_scale, skip_if_nonfinite)
    saves, and a fresh optimizer with other settings loads it and continues bitwise."""
    options = dict(clip_grad_norm=0.5, grad_scale=8.0, skip_if_nonfinite=True)
    grads = make_grads(np.float32, 10)
    flat = fastopt.flatten(make_params(np.float32))
    opt = fastopt.AdamW(flat, lr=schedule, **options)
    for g in grads[:5]:
        opt.step(g)
    save(opt, tmp_path / "loop.safetensors")
    copies = [p.copy() for p in flat.params]
    resumed = fastopt.AdamW(copies, lr=0.5)
    load(resumed, tmp_path / "loop.safetensors")
    assert resumed.param_groups[0]["lr"] == schedule
    assert type(resumed.param_groups[0]["lr"]) is type(schedule)
    assert {k: getattr(resumed, k) for k in options} == options
    for g in grads[5:]:
        opt.step(g)
        resumed.step(g)
    for a, b in zip(copies, flat.params):
        np.testing.assert_array_equal(a, b)
    stored = json.loads(metadata_of(tmp_path / "loop.safetensors")["param_groups"])
    assert stored[0]["lr"]["schedule"] == type(schedule).__name__   # data, not code


def test_other_callables_are_not_stored(tmp_path):
    opt = fastopt.Adam([np.ones(3)], lr=lambda step: 0.1)
    with pytest.raises(TypeError, match="only fastopt.schedules"):
        save(opt, tmp_path / "opt.safetensors")
    assert not os.listdir(tmp_path)


def scheduled(tmp_path):
    opt = fastopt.Adam([np.ones(3)], lr=schedules.cosine(0.01, total_steps=10),
                       clip_grad_norm=1.0)
    opt.step([np.ones(3)])
    save(opt, tmp_path / "opt.safetensors")
    return tmp_path / "opt.safetensors"


FORGED_LOOP = {
    "unknown-schedule": ({"schedule": "system", "fields": {"command": "rm -rf /"}},
                         "unknown schedule"),
    "private-name": ({"schedule": "_Schedule", "fields": {}}, "unknown schedule"),
    "bad-field-value": ({"schedule": "cosine", "fields": {"lr": -1.0, "total_steps": 10}},
                        "Invalid lr"),
    "wrong-field-type": ({"schedule": "cosine", "fields": {"lr": "0.1", "total_steps": 10}},
                         "lr must be a real number"),
    "huge-field": ({"schedule": "cosine", "fields": {"lr": 10 ** 400, "total_steps": 10}},
                   "schedule cosine"),
    "unknown-field": ({"schedule": "cosine", "fields": {"lr": 0.1, "total_steps": 10,
                                                        "__init__": 1}}, "takes fields"),
    "missing-field": ({"schedule": "cosine", "fields": {"lr": 0.1}}, "takes fields"),
    "not-a-schedule": ({"lr": 0.1}, "a stored schedule is"),
}


@pytest.mark.parametrize("case", FORGED_LOOP)
def test_forged_schedule_is_refused(case, tmp_path):
    lr, match = FORGED_LOOP[case]
    source = scheduled(tmp_path)
    path = forge(tmp_path / "forged.safetensors", source, param_groups=forged_json(
        source, "param_groups", lambda groups: groups[0].__setitem__("lr", lr)))
    params = [np.zeros(3)]
    opt = fastopt.Adam(params, lr=0.5)
    opt.step([np.ones(3)])
    check_rejected(opt, path, match, params)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.clip_grad_norm is None


@pytest.mark.parametrize("options, match", [
    ({"grad_scale": 0.0}, "grad_scale"),
    ({"grad_scale": 10 ** 400}, "grad_scale"),
    ({"clip_grad_norm": "1.0"}, "clip_grad_norm"),
    ({"skip_if_nonfinite": "yes"}, "skip_if_nonfinite"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
    ({"learning_rate": 1.0}, "unknown loop options"),
])
def test_forged_loop_options_are_refused(options, match, tmp_path):
    source = scheduled(tmp_path)
    path = forge(tmp_path / "forged.safetensors", source, loop_options=json.dumps(options))
    params = [np.zeros(3)]
    opt = fastopt.Adam(params, lr=0.5)
    opt.step([np.ones(3)])
    check_rejected(opt, path, match, params)
    assert (opt.clip_grad_norm, opt.grad_scale, opt.skip_if_nonfinite) == (None, 1.0, False)


def test_file_without_loop_options_leaves_them(tmp_path):
    """A file of fastopt 0.1.0 has no loop_options: the optimizer keeps its own."""
    source = scheduled(tmp_path)
    path = forge(tmp_path / "old.safetensors", source, loop_options=None)
    opt = fastopt.Adam([np.zeros(3)], grad_scale=4.0)
    load(opt, path)
    assert (opt.clip_grad_norm, opt.grad_scale) == (None, 4.0)


# --- what save replaces, and what it leaves behind ----------------------------------------


def test_save_refuses_special_files_and_folders(tmp_path):
    """A FIFO, a symlink to /dev/null and a folder are refused with ValueError; each stays
    what it was (before, the FIFO and the link were replaced by regular files)."""
    opt, _ = trained(steps=1)
    fifo, null, folder = tmp_path / "fifo", tmp_path / "null", tmp_path / "folder"
    os.mkfifo(fifo)
    os.symlink(os.devnull, null)
    folder.mkdir()
    for target, kind in [(fifo, "is a FIFO"), (null, "points to a character device"),
                         (folder, "is a folder")]:
        with pytest.raises(ValueError, match=f"{kind}, not a regular file"):
            save(opt, target)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.path.islink(null) and os.readlink(null) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert folder.is_dir() and not os.listdir(folder)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "folder", "null"]   # no temporaries


def test_save_follows_a_symlink(tmp_path):
    """A symlink to a checkpoint stays a link; the file it points to is replaced."""
    opt, params = trained(steps=1)
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "opt.safetensors"
    real.write_bytes(b"old")
    os.chmod(real, 0o600)
    link = tmp_path / "latest.safetensors"
    os.symlink(real, link)
    save(opt, link)
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert os.stat(real).st_mode & 0o777 == 0o600
    other = fastopt.Adam([p.copy() for p in params], amsgrad=True)
    load(other, link)
    assert_same_state(other.state_dict(), opt.state_dict())
    assert os.listdir(tmp_path / "runs") == ["opt.safetensors"]


KILLED_SAVE = """
import os, signal, sys
import numpy as np
import fastopt
opt = fastopt.Adam([np.ones(1000)])
opt.step([np.ones(1000)])
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)   # killed mid-save
fastopt.save(opt, sys.argv[1])
"""


def test_next_save_removes_the_temporary_of_a_killed_save(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / "opt.safetensors"
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".opt.safetensors.")   # the leftover
    assert os.path.getsize(tmp_path / left[0]) > 8000    # most of the checkpoint
    opt, params = trained(steps=1)
    save(opt, path)
    assert os.listdir(tmp_path) == ["opt.safetensors"]
    other = fastopt.Adam([p.copy() for p in params], amsgrad=True)
    load(other, path)
    assert_same_state(other.state_dict(), opt.state_dict())


def test_temporary_of_a_save_in_progress_is_kept(tmp_path):
    """A temporary that another save holds locked is not stale: left alone."""
    fcntl = pytest.importorskip("fcntl")
    opt, _ = trained(steps=1)
    busy = tmp_path / ".opt.safetensors.0123456789abcdef.fastopt-tmp"
    other = tmp_path / ".other.safetensors.0123456789abcdef.fastopt-tmp"
    busy.write_bytes(b"half")
    other.write_bytes(b"another path's")
    with open(busy, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        save(opt, tmp_path / "opt.safetensors")
        assert busy.exists()
    save(opt, tmp_path / "opt.safetensors")   # no longer held: stale, removed
    assert sorted(os.listdir(tmp_path)) == [other.name, "opt.safetensors"]


def test_huge_bogus_file_is_a_value_error_before_reading_it(tmp_path):
    """A valid checkpoint followed by a terabyte of (sparse) zeros: the header's declared
    sizes do not match the file's, so load refuses it before reading the data (before, it
    read the whole file: MemoryError)."""
    opt, params = trained()
    path = tmp_path / "huge.safetensors"
    save(opt, path)
    with open(path, "r+b") as file:
        file.truncate(2 ** 40)
    target, target_params = fresh_target(np.float64)
    check_rejected(target, path, r"declares \d+ bytes of tensor data, the file holds "
                   r"1099511\d{6}", target_params)


def test_header_longer_than_safetensors_allows_is_refused(tmp_path):
    path = tmp_path / "long.safetensors"
    with open(path, "wb") as file:
        file.write((200_000_000).to_bytes(8, "little"))
        file.truncate(300_000_000)
    target, target_params = fresh_target(np.float64)
    check_rejected(target, path, "exceeds safetensors' limit", target_params)


def test_load_refuses_a_folder(tmp_path):
    target, target_params = fresh_target(np.float64)
    check_rejected(target, tmp_path, "is a folder, not a regular file", target_params)


# --- damaged files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_file(tmp_path_factory):
    opt, params = trained("adam-amsgrad", np.float32)
    path = tmp_path_factory.mktemp("ckpt") / "opt.safetensors"
    save(opt, path, params=True)
    return path.read_bytes()




@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file_is_a_value_error(fraction, saved_file, tmp_path):
    cut = int(fraction * len(saved_file))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(saved_file[:cut])
    opt, params = fresh_target()
    check_rejected(opt, path, "corrupt or truncated checkpoint", params)


def test_truncated_at_every_header_position_and_empty(saved_file, tmp_path):
    length = int.from_bytes(saved_file[:8], "little")
    opt, params = fresh_target()
    path = tmp_path / "cut.safetensors"
    for cut in list(range(0, 8 + length + 9)) + [len(saved_file) - 1]:
        path.write_bytes(saved_file[:cut])
        check_rejected(opt, path, "corrupt or truncated checkpoint", params)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipped_header_bytes_are_a_value_error(data, saved_file, tmp_path):
    """1 to 3 bytes of the length prefix or the JSON header XOR-ed with a non-zero byte:
    always ValueError (the checksum covers every byte, even the header's padding)."""
    length = int.from_bytes(saved_file[:8], "little")
    damaged = bytearray(saved_file)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, 8 + length - 1))
        damaged[at] ^= data.draw(st.integers(1, 255))
    if bytes(damaged) == saved_file:  # two flips cancelled out
        return
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(damaged))
    opt, params = fresh_target()
    check_rejected(opt, path, "corrupt or truncated checkpoint|format version", params)


def test_flipped_data_byte_is_a_value_error(saved_file, tmp_path):
    opt, params = fresh_target()
    path = tmp_path / "flipped.safetensors"
    data_start = 8 + int.from_bytes(saved_file[:8], "little")
    for at in (len(saved_file) - 1, len(saved_file) - 40,
               (data_start + len(saved_file)) // 2, data_start):
        damaged = bytearray(saved_file)
        damaged[at] ^= 0x01
        path.write_bytes(bytes(damaged))
        check_rejected(opt, path, "checksum mismatch", params)


# --- fastopt.torch ---------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["Adam", "SGD", "NAdam", "ASGD"])
def test_torch_adapter_round_trip(rule, tmp_path):
    """NAdam's mu_product and ASGD's eta and mu (0-d tensors in torch's layout) travel as
    JSON state values and are recomputed from the step on load."""
    torch = pytest.importorskip("torch")
    fastopt_torch = pytest.importorskip("fastopt.torch")
    cls = getattr(fastopt_torch, rule)
    options = {"Adam": dict(lr=0.01, amsgrad=True), "SGD": dict(lr=0.05, momentum=0.9),
               "NAdam": dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1),
               "ASGD": dict(lr=0.05, t0=2)}[rule]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    opt = cls(model.parameters(), **options)
    x = torch.randn(8, 4)

    def train(module, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            module(x).square().mean().backward()
            optimizer.step()

    train(model, opt, 3)
    save(opt, tmp_path / "torch.safetensors", params=True)
    resumed = cls(twin.parameters(), lr=0.5)
    load(resumed, tmp_path / "torch.safetensors")
    for a, b in zip(twin.parameters(), model.parameters()):
        assert torch.equal(a, b)
    train(model, opt, 3)
    train(twin, resumed, 3)
    for a, b in zip(twin.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert resumed.param_groups[0]["lr"] == options["lr"]
    saved = safetensors_numpy.load((tmp_path / "torch.safetensors").read_bytes())
    if rule == "Adam":  # torch.optim's layout: step is a 0-d float tensor, kept as one
        assert saved["state/0/step"].shape == () and torch.is_tensor(resumed.state_dict()[
            "state"][0]["step"])
    other = fastopt_torch.Adagrad(torch.nn.Linear(4, 3).parameters())
    with pytest.raises(ValueError, match=f"is for {rule}, optimizer is Adagrad"):
        load(other, tmp_path / "torch.safetensors")
