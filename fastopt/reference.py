"""Plain NumPy transcriptions of every rule: the oracle for tests, the baseline for benchmarks.

Written for reading next to the seed's equations, not for speed. Each function takes one
parameter array, its gradient, a state dict (PyTorch's keys, including ``step``) and the
hyperparameters; it returns the new parameter and the new state and changes nothing it
was given. Arithmetic stays in the parameter's dtype (NumPy 2 keeps float32 arrays float32
when combined with Python floats). ``grad_factor`` multiplies the gradient first (loss-scale
unscaling, clipping); ``maximize`` then negates it, as in PyTorch.
"""

import numpy as np


def _gradient(param, grad, grad_factor, maximize, weight_decay):
    """The gradient every rule sees: scaled, negated to maximize, plus L2 decay (none at
    all when ``weight_decay`` is 0, as in torch: ``0 * inf`` would be NaN)."""
    g = grad * param.dtype.type(grad_factor)
    if maximize:
        g = -g
    return g + weight_decay * param if weight_decay != 0 else g


def _decoupled(param, lr, weight_decay, decoupled):
    """``(param, weight_decay)`` for the gradient: with ``decoupled`` (AdamW's form) the
    param decayed first, ``w *= 1 - lr*wd``, and no L2 term left; else as given."""
    if decoupled:
        return param * (1 - lr * weight_decay), 0.0
    return param, weight_decay


def sgd(param, grad, state, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False, grad_factor=1.0):
    """Seed: ``w = w - lr * dL/dw``; momentum as PyTorch: ``b = mu*b + (1-dampening)*g``
    (``b = g`` on the first step), ``w -= lr*b``; Nesterov: ``w -= lr*(g + mu*b)``."""
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    state = dict(state)
    if momentum != 0:
        if "momentum_buffer" in state:
            b = momentum * state["momentum_buffer"] + (1 - dampening) * g
        else:
            b = g.copy()
        state["momentum_buffer"] = b
        g = g + momentum * b if nesterov else b
    return param - lr * g, state


def adagrad(param, grad, state, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
            initial_accumulator_value=0.0, eps=1e-10, maximize=False, grad_factor=1.0):
    """Seed: ``r = r + g*g; w = w - lr/(delta + sqrt(r)) * g`` with ``lr`` decayed as
    ``lr / (1 + (t-1)*lr_decay)`` (PyTorch)."""
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    r = state.get("sum", np.full_like(param, initial_accumulator_value))
    r = r + g * g
    clr = lr / (1 + (t - 1) * lr_decay)
    return param - clr * (g / (np.sqrt(r) + eps)), {"step": t, "sum": r}


def rmsprop(param, grad, state, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
            momentum=0.0, centered=False, nesterov=False, eps_in_sqrt=False,
            maximize=False, grad_factor=1.0):
    """Seed: ``r = rho*r + (1-rho)*g*g; w = w - lr/sqrt(delta + r) * g`` (``eps_in_sqrt``);
    PyTorch's default puts eps outside the root: ``sqrt(r) + eps``. ``centered`` subtracts
    the square of the running mean gradient. Momentum: ``b = mu*b + g/d; w -= lr*b``;
    Nesterov (the seed's "RMSProp with momentum", look-ahead stored in ``w``):
    ``w -= lr*(g/d + mu*b)``."""
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    new = {"step": t}
    r = alpha * state.get("square_avg", np.zeros_like(param)) + (1 - alpha) * g * g
    new["square_avg"] = r
    if centered:
        c = state.get("grad_avg", np.zeros_like(param))
        c = c + (1 - alpha) * (g - c)
        new["grad_avg"] = c
        # torch's addcmul is a fused multiply-add: an Inf r stays Inf, not Inf - Inf
        r = np.where(np.isfinite(r), r - c * c, r)
    d = np.sqrt(r + eps) if eps_in_sqrt else np.sqrt(r) + eps
    step = g / d
    if momentum > 0:
        b = momentum * state.get("momentum_buffer", np.zeros_like(param)) + step
        new["momentum_buffer"] = b
        step = step + momentum * b if nesterov else b
    return param - lr * step, new


def adam(param, grad, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         amsgrad=False, maximize=False, grad_factor=1.0, decoupled_weight_decay=False):
    """Seed (with the book's bias correction ``1 - rho**t``): ``s = rho1*s + (1-rho1)*g``;
    ``r = rho2*r + (1-rho2)*g*g``; ``w -= lr * s_hat / (sqrt(r_hat) + delta)``.
    ``decoupled_weight_decay`` is AdamW: ``w *= 1 - lr*wd`` before the update, no L2 term."""
    beta1, beta2 = betas
    param, weight_decay = _decoupled(param, lr, weight_decay, decoupled_weight_decay)
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    m = beta1 * state.get("exp_avg", np.zeros_like(param)) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", np.zeros_like(param)) + (1 - beta2) * g * g
    new = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    if amsgrad:
        v = np.maximum(state.get("max_exp_avg_sq", np.zeros_like(param)), v)
        new["max_exp_avg_sq"] = v
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    return param - lr * (m_hat / (np.sqrt(v_hat) + eps)), new


def adamw(param, grad, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
          amsgrad=False, maximize=False, grad_factor=1.0):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, PyTorch's default 1e-2."""
    return adam(param, grad, state, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                amsgrad=amsgrad, maximize=maximize, grad_factor=grad_factor,
                decoupled_weight_decay=True)




# --- torch.optim rules, set A: Adamax, RAdam, Adadelta, Rprop --------------------------
# ``grad_factor`` multiplies the gradient first (1/loss_scale, clipping); ``maximize``
# then negates it, as ``grad_scale`` in the rules above.


def adamax(param, grad, state, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
           maximize=False, grad_factor=1.0):
    """Adamax (Kingma & Ba, section 7.1): ``m = beta1*m + (1-beta1)*g``;
    ``u = max(beta2*u, |g| + eps)`` (PyTorch adds eps inside the max; a NaN on either
    side gives NaN); ``w -= lr/(1 - beta1**t) * m / u``."""
    beta1, beta2 = betas
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    m = beta1 * state.get("exp_avg", np.zeros_like(param)) + (1 - beta1) * g
    u = np.maximum(beta2 * state.get("exp_inf", np.zeros_like(param)), np.abs(g) + eps)
    clr = lr / (1 - beta1 ** t)
    return param - clr * m / u, {"step": t, "exp_avg": m, "exp_inf": u}


def radam(param, grad, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled_weight_decay=False, maximize=False, grad_factor=1.0):
    """RAdam (Liu et al. 2019, Algorithm 2): Adam's moments; ``rho_inf = 2/(1-beta2) - 1``,
    ``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)``; while ``rho_t > 5``
    ``w -= lr * m_hat * r_t * sqrt(1 - beta2**t) / (sqrt(v) + eps)`` with
    ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``, else
    ``w -= lr * m_hat`` (SGD with momentum). ``decoupled_weight_decay``:
    ``w *= 1 - lr*wd`` first, no L2 term (PyTorch)."""
    beta1, beta2 = betas
    param, weight_decay = _decoupled(param, lr, weight_decay, decoupled_weight_decay)
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    m = beta1 * state.get("exp_avg", np.zeros_like(param)) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", np.zeros_like(param)) + (1 - beta2) * g * g
    new = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    m_hat = m / (1 - beta1 ** t)
    bias_correction2 = 1 - beta2 ** t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2 ** t / bias_correction2
    if rho_t > 5:
        r_t = ((rho_t - 4) * (rho_t - 2) * rho_inf
               / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5    # Python floats
        return param - lr * m_hat * r_t * bias_correction2 ** 0.5 / (np.sqrt(v) + eps), new
    return param - lr * m_hat, new


def adadelta(param, grad, state, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
             maximize=False, grad_factor=1.0):
    """Adadelta (Zeiler 2012, Algorithm 1): ``E[g2] = rho*E[g2] + (1-rho)*g*g``;
    ``dx = sqrt(E[dx2] + eps) / sqrt(E[g2] + eps) * g``;
    ``E[dx2] = rho*E[dx2] + (1-rho)*dx*dx``; ``w -= lr*dx`` (PyTorch's ``lr``, 1 in the
    paper)."""
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    r = rho * state.get("square_avg", np.zeros_like(param)) + (1 - rho) * g * g
    a = state.get("acc_delta", np.zeros_like(param))
    dx = np.sqrt(a + eps) / np.sqrt(r + eps) * g
    a = rho * a + (1 - rho) * dx * dx
    return param - lr * dx, {"step": t, "square_avg": r, "acc_delta": a}


def rprop(param, grad, state, *, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50),
          maximize=False, grad_factor=1.0):
    """Rprop (Riedmiller & Braun 1993, the iRprop- variant as PyTorch): where the gradient
    keeps its sign the step size grows by ``etaplus``, where it flips it shrinks by
    ``etaminus`` (clamped to ``step_sizes``) and that step is skipped (the gradient is
    taken as 0); ``w -= sign(g) * step_size``. As PyTorch on the CPU, the sign of NaN
    is 0: a NaN ``g * prev`` keeps the step size, a NaN gradient leaves ``w`` as it is."""
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes
    g = _gradient(param, grad, grad_factor, maximize, 0.0)
    t = state.get("step", 0) + 1
    prev = state.get("prev", np.zeros_like(param))
    step_size = state.get("step_size", np.full_like(param, lr))
    direction = g * prev
    factor = np.where(direction > 0, etaplus,
                      np.where(direction < 0, etaminus, 1)).astype(param.dtype)
    step_size = np.minimum(np.maximum(step_size * factor, step_size_min), step_size_max)
    g = np.where(direction < 0, 0, g).astype(param.dtype)
    sign = (g > 0).astype(param.dtype) - (g < 0).astype(param.dtype)   # sign(NaN) = 0
    return param - sign * step_size, {"step": t, "prev": g, "step_size": step_size}


def nadam(param, grad, state, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False,
          grad_factor=1.0):
    """NAdam (Dozat 2016, as torch.optim.NAdam): Adam whose update mixes the current
    gradient and the momentum by this and the next step's momentum coefficients,
    ``mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))``, bias-corrected by their running
    product ``mu_product`` (kept in the state as a Python float, as torch keeps a 0-d
    tensor)::

        m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g*g
        w -= lr * ((1-mu_t)/(1-prod_t) * g + mu_{t+1}/(1-prod_t*mu_{t+1}) * m)
                / (sqrt(v/(1-beta2**t)) + eps)

    ``decoupled_weight_decay``: ``w *= 1 - lr*wd`` first, no L2 term (NAdamW)."""
    beta1, beta2 = betas
    param, weight_decay = _decoupled(param, lr, weight_decay, decoupled_weight_decay)
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    mu_product = state.get("mu_product", 1.0) * mu
    m = beta1 * state.get("exp_avg", np.zeros_like(param)) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", np.zeros_like(param)) + (1 - beta2) * g * g
    denom = np.sqrt(v / (1 - beta2 ** t)) + eps
    update = ((1 - mu) / (1 - mu_product)) * g + (mu_next / (1 - mu_product * mu_next)) * m
    new = {"step": t, "mu_product": mu_product, "exp_avg": m, "exp_avg_sq": v}
    return param - lr * (update / denom), new


def asgd(param, grad, state, *, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
         maximize=False, grad_factor=1.0):
    """ASGD (Polyak & Juditsky 1992, as torch.optim.ASGD): SGD with a decaying step and a
    running average ``ax`` of the iterates, which starts averaging after step ``t0``::

        w = w*(1 - lambd*eta) - eta*g
        ax = w if mu == 1 else ax + mu*(w - ax)

    then, for the next step, ``eta = lr / (1 + lambd*lr*t)**alpha`` and
    ``mu = 1 / max(1, t - t0)`` (Python floats in the state; initially ``lr`` and 1)."""
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    eta, mu = state.get("eta", lr), state.get("mu", 1.0)
    param = param * (1 - lambd * eta) - eta * g
    ax = param.copy() if mu == 1 else state.get("ax", np.zeros_like(param))
    if mu != 1:
        ax = ax + mu * (param - ax)
    new = {"step": t, "eta": lr / (1 + lambd * lr * t) ** alpha,
           "mu": 1 / max(1, t - t0), "ax": ax}
    return param, new


def lion(param, grad, state, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
         maximize=False, grad_factor=1.0):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign
    of an interpolation between momentum and gradient, decoupled weight decay::

        w = w*(1 - lr*wd) - lr*sign(beta1*m + (1-beta1)*g)
        m = beta2*m + (1-beta2)*g

    ``sign(0) = 0``; ``sign(NaN) = NaN`` (NumPy's; torch's CPU sign gives 0)."""
    beta1, beta2 = betas
    g = _gradient(param, grad, grad_factor, maximize, 0.0)
    m = state.get("exp_avg", np.zeros_like(param))
    param = param * (1 - lr * weight_decay) - lr * np.sign(beta1 * m + (1 - beta1) * g)
    return param, {"step": state.get("step", 0) + 1, "exp_avg": beta2 * m + (1 - beta2) * g}


def _norm(x):
    """``||x||`` of one tensor from float64 squares (a float32 norm cannot overflow)."""
    return float(np.sqrt(np.sum(np.square(x.astype(np.float64)))))


def lamb(param, grad, state, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
         maximize=False, grad_factor=1.0):
    """LAMB (You et al. 2020, as optax's ``lamb``) over ONE tensor, the scope of its norms::

        m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g*g
        u = (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps) + weight_decay*w
        trust = ||w|| / ||u||   (1 where either norm is 0)
        w -= lr * trust * u

    The norms are taken in float64; ``lr * trust`` is rounded once to the param's dtype."""
    beta1, beta2 = betas
    g = _gradient(param, grad, grad_factor, maximize, 0.0)
    t = state.get("step", 0) + 1
    m = beta1 * state.get("exp_avg", np.zeros_like(param)) + (1 - beta1) * g
    v = beta2 * state.get("exp_avg_sq", np.zeros_like(param)) + (1 - beta2) * g * g
    u = (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    if weight_decay != 0:
        u = u + weight_decay * param
    param_norm, update_norm = _norm(param), _norm(u)
    trust = 1.0 if param_norm == 0 or update_norm == 0 else param_norm / update_norm
    step = param.dtype.type(lr * trust)
    return param - step * u, {"step": t, "exp_avg": m, "exp_avg_sq": v}


def _rounded_norm(x):
    """torch's ``x.norm(2).item()`` for a tensor of ``x``'s dtype: here the float64 norm
    rounded once to that dtype, as a Python float."""
    return float(x.dtype.type(_norm(x)))


def _lerp(start, end, weight):
    """torch's ``start.lerp_(end, weight)`` (the branch on ``weight < 0.5``; the
    coefficient ``weight`` or ``weight - 1`` derived in float64, as the kernels take it)."""
    if weight < 0.5:
        return start + start.dtype.type(weight) * (end - start)
    return end + start.dtype.type(weight - 1.0) * (end - start)


def adafactor(param, grad, state, *, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
              weight_decay=0.0, maximize=False, grad_factor=1.0):
    """Adafactor as ``torch.optim.Adafactor``'s ``_single_tensor_adafactor``, over ONE
    tensor (its norms and factors are per tensor; state ``row_var`` ``(*lead, R, 1)`` and
    ``col_var`` ``(*lead, 1, C)`` for 2+ dims, ``variance`` otherwise)::

        w = t**beta2_decay ;  rho = min(lr, 1/sqrt(t))
        alpha = max(eps2, ||p|| / sqrt(n)) * rho ;  p = p * (1 - lr*weight_decay)
        row_var = lerp(row_var, mean(g*g, -1), w) ;  col_var = lerp(col_var, mean(g*g, -2), w)
        v = row_var @ col_var / max(mean(row_var, -2), eps1)     (or lerp(variance, g*g, w))
        u = g / sqrt(max(v, eps1**2)) ;  p = p - alpha / max(1, ||u|| / (sqrt(n) d)) * u

    ``eps1=None``: the dtype's machine epsilon. Reductions are float64 sums rounded once
    to the dtype (where torch's return a tensor); ``alpha``, ``denom`` in float64. An
    empty param steps (its state advances, nothing moves); torch raises
    ``ZeroDivisionError`` there (``0.0 / 0 ** 0.5``)."""
    dtype = param.dtype.type
    g = _gradient(param, grad, grad_factor, maximize, 0.0)
    t = state.get("step", 0) + 1
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = float(np.finfo(param.dtype).eps)
    weight = float(t) ** beta2_decay
    rho = min(lr, 1 / t ** 0.5)
    n = param.size
    root = max(n, 1) ** 0.5   # an empty param: nothing moves (torch divides 0 by 0)
    alpha = max(eps2, _rounded_norm(param) / root) * rho
    if weight_decay != 0:
        param = param * dtype(1 - lr * weight_decay)
    new = {"step": t}
    wide = np.square(g.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty row's mean: 0/0, NaN
        return _adafactor_rest(param, g, state, wide, new, weight, eps1, alpha, root, d)


def _adafactor_rest(param, g, state, wide, new, weight, eps1, alpha, root, d):
    """The factors, the variance estimate and the update of :func:`adafactor`."""
    dtype = param.dtype.type
    if g.ndim > 1:
        rows, cols = g.shape[-2], g.shape[-1]
        row_mean = np.sqrt(wide.sum(axis=-1, keepdims=True)).astype(param.dtype)
        row_mean = row_mean * row_mean / dtype(cols)
        col_mean = np.sqrt(wide.sum(axis=-2, keepdims=True)).astype(param.dtype)
        col_mean = col_mean * col_mean / dtype(rows)
        row_var = _lerp(state.get("row_var", np.zeros(g.shape[:-1] + (1,), param.dtype)),
                        row_mean, weight)
        col_var = _lerp(state.get("col_var", np.zeros(g.shape[:-2] + (1, cols),
                                                      param.dtype)), col_mean, weight)
        new["row_var"], new["col_var"] = row_var, col_var
        mean = (row_var.astype(np.float64).sum(axis=-2, keepdims=True) / rows).astype(
            param.dtype)
        mean = np.where(mean < dtype(eps1), dtype(eps1), mean)
        v = row_var * col_var / mean
    else:
        variance = _lerp(state.get("variance", np.zeros_like(param)), g * g, weight)
        new["variance"] = v = variance
    v = np.where(v < dtype(eps1 * eps1), dtype(eps1 * eps1), v)
    u = (dtype(1) / np.sqrt(v)) * g
    denom = max(1.0, _rounded_norm(u) / (root * d))
    return param + dtype(-alpha / denom) * u, new


def yogi(param, grad, state, *, lr=1e-2, betas=(0.9, 0.999), eps=1e-3,
         initial_accumulator_value=1e-6, weight_decay=0.0, maximize=False, grad_factor=1.0):
    """Yogi (Zaheer et al. 2018), optax's ``scale_by_yogi`` then the learning rate:
    ``m = b1*m + (1-b1)*g``; ``v = v - (1-b2)*sign(v - g*g)*g*g`` (both start at
    ``initial_accumulator_value``); ``w -= lr * m_hat / (sqrt(v_hat) + eps)`` with Adam's
    bias corrections."""
    beta1, beta2 = betas
    g = _gradient(param, grad, grad_factor, maximize, weight_decay)
    t = state.get("step", 0) + 1
    start = np.full_like(param, initial_accumulator_value)
    m = beta1 * state.get("exp_avg", start) + (1 - beta1) * g
    v = state.get("exp_avg_sq", start)
    v = v - (1 - beta2) * np.sign(v - g * g) * (g * g)
    m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return param - lr * (m_hat / (np.sqrt(v_hat) + eps)), {"step": t, "exp_avg": m,
                                                           "exp_avg_sq": v}


#: Every rule's reference, by the rule's registry name (:mod:`fastopt.rules`).
def mix32(x):
    """``lowbias32``: the integer hash of ``fastopt.kernels.halves``, on uint32 arrays
    (wrapping, as the kernels' ``np.uint32`` steps)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def state_noise(noise_key, size):
    """The 32 random bits per element ``i < size`` that low-precision state rounds with:
    ``mix32((i * 0x9E3779B9 mod 2**32) ^ mix32(noise_key))``."""
    i = np.arange(size, dtype=np.uint64)
    counter = ((i * np.uint64(0x9E3779B9)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return mix32(counter ^ mix32(np.array([int(noise_key)], dtype=np.uint32)))


def block_key(key, block):
    """The noise key of block ``block`` of a call keyed ``key`` run in blocks: ``key`` for
    block 0, else ``mix32(key ^ (block * 0x85EBCA6B mod 2**32)) >> 8``
    (``fastopt.kernels.halves.block_key``)."""
    if block == 0:
        return int(key)
    x = np.array([(int(key) ^ (block * 0x85EBCA6B)) & 0xFFFFFFFF], dtype=np.uint32)
    return int(mix32(x)[0] >> np.uint32(8))


def blocked_noise(key, size, block):
    """:func:`state_noise` of a call keyed ``key`` over ``size`` elements run in blocks of
    ``block`` (:func:`block_key` per block, indices within the block)."""
    return np.concatenate([state_noise(block_key(key, k), min(block, size - start))
                           for k, start in enumerate(range(0, size, block))]
                          or [np.zeros(0, np.uint32)])


def more_noise(noise):
    """32 more random bits from ``noise`` (a third state buffer's): ``mix32(noise ^
    0x632BE5AB)``."""
    return mix32(noise ^ np.uint32(0x632BE5AB))


def round_stochastic(values, noise):
    """Float32 ``values`` rounded to bfloat16 bits (uint16) by the low 16 bits of
    ``noise``: add them to the float32 bits, keep the top 16. A NaN becomes a quiet NaN
    with its sign."""
    values = np.asarray(values, np.float32)
    bits = values.view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = (bits + (noise & np.uint32(0xFFFF))) >> np.uint32(16)
    quiet = (bits >> np.uint32(16)) | np.uint32(0x40)
    return np.where(np.isnan(values), quiet, rounded).astype(np.uint16)


RULES = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adam": adam, "adamw": adamw,
         "adamax": adamax, "radam": radam, "adadelta": adadelta, "rprop": rprop,
         "nadam": nadam, "asgd": asgd, "lion": lion, "lamb": lamb, "yogi": yogi,
         "adafactor": adafactor}
