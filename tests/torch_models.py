"""The small model and batch the torch adapter tests train, and their shared checks (one
definition for every file)."""

import torch
from torch import nn


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def make_batch(dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(16, 4, generator=generator, dtype=dtype),
            torch.randn(16, 3, generator=generator, dtype=dtype))


def assert_same_training(got, got_opt, want, want_opt):
    """Params ``got`` (optimizer ``got_opt``) bitwise ``want`` (``want_opt``), and every
    state entry of each param too."""
    for i, (p, q) in enumerate(zip(got, want)):
        assert torch.equal(p, q), f"params[{i}]"
        for key, value in want_opt.state[q].items():
            mine = got_opt.state[p][key]
            assert torch.equal(torch.as_tensor(mine), torch.as_tensor(value)), (i, key)
