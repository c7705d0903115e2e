"""The seed's own forms of Nesterov momentum, run literally, against fastopt.

The seed (and Goodfellow et al., alg. 8.3 and 8.6) evaluates the gradient at the
look-ahead point ``w + mu*v`` and then sets ``w = w + v``. fastopt stores the look-ahead
point itself as the parameter, ``p = w + mu*v``, so only one gradient per step is needed at
the parameter. These tests run both on a logistic-regression loss and check
``p_t == w_t + mu*v_t`` at every step (float64; the two forms round differently and the
gap stays within ~1e-15 relative after 100 steps, so rtol 1e-10; a wrong form is off by
1e-2 within a few steps).
"""

import numpy as np
import pytest

import fastopt

MU, LR, STEPS = 0.9, 0.5, 100


def logistic_problem(seed=0, n=200, d=6):
    rng = np.random.default_rng(seed)
    x = np.hstack([rng.standard_normal((n, d - 1)), np.ones((n, 1))])
    true_w = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ true_w))).astype(np.float64)

    def loss(w):
        z = x @ w
        return np.mean(np.logaddexp(0, z) - y * z)

    def grad(w):
        return x.T @ (1 / (1 + np.exp(-x @ w)) - y) / n

    return loss, grad, np.zeros(d)


def test_sgd_nesterov_equals_seed_look_ahead_form():
    loss, grad, w0 = logistic_problem()
    w, v = w0.copy(), np.zeros_like(w0)          # the seed's variables
    p = w0.copy()                                # fastopt's parameter
    opt = fastopt.SGD([p], lr=LR, momentum=MU, nesterov=True)
    for _ in range(STEPS):
        v = MU * v - LR * grad(w + MU * v)       # seed: gradient at the look-ahead point
        w = w + v
        opt.step([grad(p)])                      # fastopt: gradient at its parameter
        np.testing.assert_allclose(p, w + MU * v, rtol=1e-10, atol=1e-12)
    assert loss(p) < 0.8 * loss(w0)


# With delta outside the root, d = |g|/sqrt(1-rho) + delta near a coordinate's optimum, so
# g/d has slope 1/delta there and amplifies rounding gaps by 1/delta: 1e-3 keeps that
# sensitivity bounded; the seed's form (inside the root) is well-conditioned at 1e-6.
@pytest.mark.parametrize("eps_in_sqrt, delta", [(True, 1e-6), (False, 1e-3)])
def test_rmsprop_nesterov_equals_seed_look_ahead_form(eps_in_sqrt, delta):
    loss, grad, w0 = logistic_problem(seed=1)
    rho, lr = 0.9, 0.01
    w, v, r = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    p = w0.copy()
    opt = fastopt.RMSprop([p], lr=lr, alpha=rho, eps=delta, momentum=MU, nesterov=True,
                          eps_in_sqrt=eps_in_sqrt)
    for _ in range(STEPS):
        g = grad(w + MU * v)                     # seed: gradient at the look-ahead point
        r = rho * r + (1 - rho) * g * g
        d = np.sqrt(delta + r) if eps_in_sqrt else np.sqrt(r) + delta
        v = MU * v - lr * g / d
        w = w + v
        opt.step([grad(p)])
        np.testing.assert_allclose(p, w + MU * v, rtol=1e-10, atol=1e-12)
    assert loss(p) < 0.8 * loss(w0)


def test_seed_gradient_descent_sgd_and_minibatch_are_one_rule():
    """GD, per-example SGD and minibatch SGD differ only in which examples make ``g``:
    each is ``w -= lr * g`` and fastopt's SGD takes exactly that step."""
    _, grad, w0 = logistic_problem(seed=2)
    p = w0.copy()
    opt = fastopt.SGD([p], lr=LR)
    w = w0.copy()
    for _ in range(20):
        g = grad(p)
        opt.step([g])
        w = w - LR * grad(w)
        np.testing.assert_allclose(p, w, rtol=1e-13, atol=1e-15)


def test_momentum_equals_seed_velocity_form():
    """Seed: ``v = eps*v - lr*g; w += v``; fastopt (torch): ``b = mu*b + g; p -= lr*b``."""
    loss, grad, w0 = logistic_problem(seed=3)
    w, v, p = w0.copy(), np.zeros_like(w0), w0.copy()
    opt = fastopt.SGD([p], lr=LR, momentum=MU)
    for _ in range(STEPS):
        v = MU * v - LR * grad(w)
        w = w + v
        opt.step([grad(p)])
        np.testing.assert_allclose(p, w, rtol=1e-10, atol=1e-12)
    assert loss(p) < 0.8 * loss(w0)
