"""``fastopt.torch`` with bfloat16/float16 parameters over a float32 master.

The bucket keeps a float32 master of the half params and float32 state; each step reads
the half gradient, updates master and state, and writes the half params, in one pass
(the kernels' ``write_copy``). So the master must be bitwise what fastopt's NumPy
optimizer gives on float32 copies fed the widened gradients, and every param bitwise the
master rounded to its dtype (round to nearest even, torch's ``.to()``), for every rule of
the test matrix.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from cases import MATRIX  # noqa: E402
from fastopt.rules import RULES  # noqa: E402
from test_torch_adapter import backward  # noqa: E402
from torch_models import make_batch, make_model  # noqa: E402

HALVES = [torch.bfloat16, torch.float16]
CASES = [(name, dict(combos[-1], lr=lr)) for name, (lr, combos) in MATRIX.items()]


def half_model(dtype, seed=0):
    return make_model(torch.float32, seed).to(dtype)


def widened(tensor):
    return tensor.detach().float().numpy().copy()


def assert_master_and_params(model, opt, masters, step):
    for i, (p, master) in enumerate(zip(model.parameters(), masters)):
        ours = opt.state[p]["master"]
        np.testing.assert_array_equal(ours.numpy(), master, err_msg=f"step {step}, {i}")
        assert torch.equal(p.detach(), torch.from_numpy(master).to(p.dtype)), (step, i)


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_master_is_the_float32_rule_on_widened_gradients(case, dtype):
    name, options = case
    model = half_model(dtype)
    masters = [widened(p) for p in model.parameters()]
    opt = getattr(ft, RULES[name].class_name)(model.parameters(), **options)
    reference = fastopt.optim.CLASSES[RULES[name].class_name](masters, **options)
    batch = [t.to(dtype) for t in make_batch()]
    for step in range(6):
        opt.zero_grad()
        backward(model, batch)
        grads = [widened(p.grad) for p in model.parameters()]
        opt.step()
        reference.step(grads)
        assert_master_and_params(model, opt, masters, step)
    for p in model.parameters():
        assert p.dtype == dtype
        assert all(v.dtype == torch.float32 for k, v in opt.state[p].items()
                   if torch.is_tensor(v) and k != "step")


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "fp16"])
def test_clipping_and_bound_gradients_read_the_half_gradient(dtype):
    """``clip_grad_norm`` reads the half gradients in their own format (the norm equals
    the float32 optimizer's on the widened values, bitwise), and gradients bound to the
    flat buffer (``zero_grad(set_to_none=False)``) step the same."""
    model = half_model(dtype)
    masters = [widened(p) for p in model.parameters()]
    opt = ft.Adam(model.parameters(), lr=0.01, clip_grad_norm=0.05)
    reference = fastopt.Adam(masters, lr=0.01, clip_grad_norm=0.05)
    batch = [t.to(dtype) for t in make_batch()]
    for step in range(5):
        opt.zero_grad(set_to_none=False)
        backward(model, batch)
        reference.step([widened(p.grad) for p in model.parameters()])
        opt.step()
        assert opt.last_grad_norm == reference.last_grad_norm
        assert_master_and_params(model, opt, masters, step)


def test_a_group_of_mixed_dtypes_keeps_one_bucket_per_dtype():
    model = make_model()
    model[0].to(torch.bfloat16)   # first layer bf16, the rest float32
    opt = ft.AdamW(model.parameters(), lr=0.01)
    assert sorted(str(b.param.dtype) for b in opt._buckets[0]) == ["torch.bfloat16",
                                                                    "torch.float32"]
    assert [b.half for b in opt._buckets[0]].count(True) == 1
    x = torch.randn(4, model[0].in_features)
    for _ in range(3):
        opt.zero_grad()
        model[2](torch.relu(model[0](x.to(torch.bfloat16)).float())).square().mean().backward()
        opt.step()
    assert model[0].weight.dtype == torch.bfloat16 and model[2].weight.dtype == torch.float32
    assert "master" in opt.state[model[0].weight] and "master" not in opt.state[model[2].weight]


@pytest.mark.parametrize("dtype", HALVES, ids=["bf16", "fp16"])
def test_state_dict_round_trip_keeps_the_float32_master(dtype):
    """A resumed run (state_dict into a fresh optimizer on a copy of the model) continues
    bitwise: the master and the state come back in float32, though torch's loader casts
    state to the param dtype."""
    model = half_model(dtype)
    opt = ft.AdamW(model.parameters(), lr=0.01)
    batch = [t.to(dtype) for t in make_batch()]
    for _ in range(3):
        opt.zero_grad()
        backward(model, batch)
        opt.step()
    saved = opt.state_dict()
    assert saved["state"][0]["master"].dtype == torch.float32
    resumed_model = copy.deepcopy(model)
    resumed = ft.AdamW(resumed_model.parameters(), lr=0.5)
    resumed.load_state_dict(saved)
    for step in range(4):
        for m, o in ((model, opt), (resumed_model, resumed)):
            o.zero_grad()
            backward(m, batch)
            o.step()
        for a, b in zip(model.parameters(), resumed_model.parameters()):
            assert torch.equal(a, b), step
            assert torch.equal(opt.state[a]["master"], resumed.state[b]["master"]), step


def test_torch_optim_checkpoint_of_bf16_params_resumes_with_the_params_as_master():
    """torch.optim.AdamW on bf16 params keeps bf16 state and no master: loading its
    checkpoint starts the master from the params (exactly widened); ours loads into
    torch's class too (torch casts our float32 state to bf16)."""
    model = half_model(torch.bfloat16)
    theirs = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=False)
    batch = [t.to(torch.bfloat16) for t in make_batch()]
    for _ in range(3):
        theirs.zero_grad()
        backward(model, batch)
        theirs.step()
    ours_model = copy.deepcopy(model)
    ours = ft.AdamW(ours_model.parameters(), lr=0.01)
    ours.load_state_dict(theirs.state_dict())
    for p in ours_model.parameters():
        assert torch.equal(ours.state[p]["master"], p.detach().float())
        assert ours.state[p]["exp_avg"].dtype == torch.float32
    ours.zero_grad()
    backward(ours_model, batch)
    ours.step()
    back = torch.optim.AdamW(copy.deepcopy(ours_model).parameters(), lr=0.01)
    back.load_state_dict(ours.state_dict())
    assert back.state_dict()["state"][0]["step"].item() == 4


def test_fastopt_checkpoint_of_a_bf16_model(tmp_path):
    """``fastopt.save``/``load`` carry the float32 master: the resumed run is bitwise."""
    model = half_model(torch.bfloat16)
    opt = ft.Adam(model.parameters(), lr=0.01)
    batch = [t.to(torch.bfloat16) for t in make_batch()]
    for _ in range(2):
        opt.zero_grad()
        backward(model, batch)
        opt.step()
    fastopt.save(opt, tmp_path / "opt.safetensors", params=True)
    resumed_model = half_model(torch.bfloat16, seed=5)
    resumed = ft.Adam(resumed_model.parameters(), lr=0.01)
    fastopt.load(resumed, tmp_path / "opt.safetensors")
    for m, o in ((model, opt), (resumed_model, resumed)):
        o.zero_grad()
        backward(m, batch)
        o.step()
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["master"], resumed.state[b]["master"])


@pytest.mark.parametrize("forged", ["a string", "wrong shape", "complex", "a list"])
def test_forged_master_is_refused_before_anything_is_loaded(forged):
    """A state dict whose ``master`` is not a real tensor of the param's shape is refused
    before torch replaces anything: params, master, state and step counts stay bitwise."""
    model = half_model(torch.bfloat16)
    opt = ft.AdamW(model.parameters(), lr=0.01)
    batch = [t.to(torch.bfloat16) for t in make_batch()]
    opt.zero_grad()
    backward(model, batch)
    opt.step()
    saved = opt.state_dict()
    bad = copy.deepcopy(saved)
    bad["state"][0]["master"] = {
        "a string": "abc", "wrong shape": torch.zeros(3),
        "complex": torch.zeros(saved["state"][0]["master"].shape, dtype=torch.complex64),
        "a list": [1.0, 2.0]}[forged]
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises((TypeError, ValueError), match="master"):
        opt.load_state_dict(bad)
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p.detach(), before)
    after = opt.state_dict()
    for index, entry in saved["state"].items():
        assert after["state"][index].keys() == entry.keys()
        for key, value in entry.items():
            assert torch.equal(after["state"][index][key], value), (index, key)
