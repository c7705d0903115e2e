"""The race: train the same MLP from the same weights with each rule, epoch by epoch.

An epoch is one pass over the training set: 1 step for ``gd``, 1,437 for ``sgd``,
``ceil(1437 / batch_size)`` for the others. The stochastic rules see the examples in the
same shuffled order (one shuffle stream per run, drawn from the seed), so a rerun with
the same seed gives the same numbers.

Times: ``wall_time`` covers the training steps (batch slicing, forward, backward,
``opt.step``), not the per-epoch evaluation of the full training loss that draws the
curve; ``step_time`` is the part spent inside ``opt.step``. Kernels are compiled (or
loaded from Numba's cache) before the clock starts.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from .model import MLP


@dataclass
class Result:
    """One rule's run. ``losses[k]`` is the mean training loss after ``k`` epochs
    (``losses[0]``: the shared starting point); NaN once a run has diverged."""

    rule: str
    optimizer: str
    lr: float
    steps: int = 0
    losses: list = field(default_factory=list)
    test_accuracy: float = float("nan")
    wall_time: float = 0.0
    step_time: float = 0.0

    @property
    def final_loss(self):
        return self.losses[-1]

    @property
    def optimizer_share(self):
        return self.step_time / self.wall_time if self.wall_time > 0 else float("nan")


def batch_size_for(rule, batch_size, n):
    return {"full": n, "one": 1, "mini": min(batch_size, n)}[rule.batch]


def warm_up(rules, weights):
    """Compile (or load from cache) every kernel the race will call, off the clock."""
    for rule in rules:
        mlp = MLP(weights)
        rule.make(mlp.flat).step()


def train(rule, weights, data, epochs, batch_size, seed, on_epoch=None):
    """Train a fresh :class:`MLP` holding ``weights`` with ``rule``; return a :class:`Result`.
    ``on_epoch()`` is called after each epoch (the progress bar)."""
    mlp = MLP(weights)
    opt = rule.make(mlp.flat)
    x_train, y_train, n = data.x_train, data.y_train, len(data.y_train)
    size = batch_size_for(rule, batch_size, n)
    shuffle = np.random.default_rng([seed, 1])  # the same order for every stochastic rule
    result = Result(rule.name, rule.describe(), rule.lr)
    result.losses.append(mlp.loss(x_train, y_train))
    clock = time.perf_counter
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(epochs):
            start = clock()
            if size < n:
                order = shuffle.permutation(n)
                x, y = x_train[order], y_train[order]
            else:
                x, y = x_train, y_train
            step_time = 0.0
            for low in range(0, n, size):
                mlp.loss_and_grad(x[low:low + size], y[low:low + size])
                before = clock()
                opt.step()
                step_time += clock() - before
            result.wall_time += clock() - start
            result.step_time += step_time
            result.steps += -(-n // size)
            result.losses.append(mlp.loss(x_train, y_train))
            if on_epoch is not None:
                on_epoch()
        result.test_accuracy = mlp.accuracy(data.x_test, data.y_test)
    return result


def race(rules, weights, data, epochs, batch_size, seed, on_epoch=None):
    """Train every rule in ``rules`` (in order) from ``weights``; a list of results."""
    warm_up(rules, weights)
    return [train(rule, weights, data, epochs, batch_size, seed, on_epoch) for rule in rules]
