"""The small model and batch the torch adapter tests train (one definition for both files)."""

import torch
from torch import nn


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def make_batch(dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(16, 4, generator=generator, dtype=dtype),
            torch.randn(16, 3, generator=generator, dtype=dtype))
