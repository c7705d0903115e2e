"""Code the fork tests' child interpreters run (importable there: tests/ is on their path;
a function defined in a module, not in ``-c`` text, so a fork Pool can pickle it)."""

import numpy as np

import fastopt


def adam_step(seed):
    """One Adam step on a buffer above the parallel threshold; the updated parameters."""
    rng = np.random.default_rng(seed)
    flat = fastopt.flatten([rng.standard_normal(200_003)])
    flat.grads[0][...] = rng.standard_normal(200_003)
    fastopt.Adam(flat, lr=0.01).step()
    return flat.params[0]
