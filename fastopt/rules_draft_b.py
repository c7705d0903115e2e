"""Host-side scalars for the NAdam, ASGD and Lion kernels (a draft, not yet wired to an
optimizer class).

For each rule, ``X_scalars(group, t, fresh)`` returns the kernel's scalar arguments for
step ``t`` (counted from 1), by the kernel's argument names, as Python floats computed in
float64 (the caller casts them to the buffers' dtype), without ``grad_factor`` (the host
folds loss-scale unscaling, clipping and ``maximize`` into it). ``group`` holds the
hyperparameters under torch.optim's names; ``fresh`` is the set of state names created
this step (none of these rules needs it: their buffers start at zero, which the kernels
handle as any other value; it is accepted so every rule has one signature).

Torch keeps some per-parameter state as 0-d tensors, not buffers: NAdam's ``mu_product``,
ASGD's ``eta`` and ``mu``. Here they are functions of ``t`` and the hyperparameters:
``nadam_scalar_state(group, t)`` and ``asgd_scalar_state(group, t)`` give the values torch
holds *after* step ``t``, so a state dict can carry them in torch's layout.

Precision against torch: these are derived in float64. Torch keeps the 0-d tensors in
its default dtype (``torch.get_default_dtype()``, float32 unless changed), whatever the
parameters' dtype, and reads them back with ``.item()``:

* NAdam's ``mu_product`` is accumulated by repeated multiplication, ``mu_product *= mu_t``
  (``mu_t`` rounded to float32, then the product), so its relative gap to the float64
  product is a random walk of roundings: measured (beta1 0.9/0.99, momentum_decay
  4e-3/0.05) 2e-8 at step 1, 2e-7 to 3e-7 at step 40, at most 5.4e-7 over 3000 steps.
  It hardly matters: ``mu_t`` starts near ``beta1/2``, so ``mu_product`` falls below 1e-3
  within 10 steps and underflows in float32 near step 100-150, and it enters the update
  only through ``1 - mu_product``; the update's coefficients differ by at most 2.5e-8
  relative (measured; worst at step 1, where ``mu_product ~ 0.45``). Against the float32
  test tolerance (rtol 2e-5) that is nothing, and below torch's own float32 rounding.
  For float64 parameters under torch's float32 default dtype the updates differ by
  1e-8 to 1e-7 of their size (measured over 40 steps), far above the float64 tolerance
  (rtol 1e-12): fastopt's float64 NAdam matches torch run with
  ``torch.set_default_dtype(torch.float64)``, which is how the tests compare.
* ASGD's ``eta`` is recomputed from ``t`` each step (not accumulated), and its initial
  value is ``lr`` itself, so torch's value is the float64 formula rounded once to float32
  (relative gap <= 6e-8); ``mu = 1/max(1, t - t0)`` likewise (exact where it is 1, so the
  copy-or-average choice agrees). The same remarks hold: harmless for float32 (measured
  for float64 parameters under the float32 default: the updates differ by 1e-8 to 6e-8
  of their size), visible at the float64 tolerance unless torch's default is float64.

Repeated calls for consecutive steps are O(1): ``nadam_scalar_state`` resumes the product
from the last step it computed for the same ``(beta1, momentum_decay)``, multiplying in
the same order, so the result is bitwise the same as a fresh product from step 1.
"""

__all__ = ["nadam_scalars", "asgd_scalars", "lion_scalars",
           "nadam_scalar_state", "asgd_scalar_state", "SCALARS"]


def _nadam_mu(beta1, momentum_decay, t):
    """Torch's momentum coefficient for step ``t``: ``beta1*(1 - 0.5*0.96**(t*psi))``."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))


#: (beta1, momentum_decay) -> (t, mu_product after step t): the last product computed.
_mu_products = {}


def nadam_scalar_state(group, t):
    """``{"mu_product": mu_1 * mu_2 * ... * mu_t}``, torch's NAdam state after step ``t``
    (1.0 at ``t = 0``), multiplied in torch's order starting from 1.0, in float64."""
    beta1, momentum_decay = float(group["betas"][0]), float(group["momentum_decay"])
    key = (beta1, momentum_decay)
    start, product = _mu_products.get(key, (0, 1.0))
    if start > t:
        start, product = 0, 1.0
    for k in range(start + 1, t + 1):
        product = product * _nadam_mu(beta1, momentum_decay, k)
    if len(_mu_products) > 64:
        _mu_products.clear()
    _mu_products[key] = (t, product)
    return {"mu_product": product}


def nadam_scalars(group, t, fresh=frozenset()):
    """The scalars of ``fastopt.kernels.nadam`` for step ``t``, from torch's
    ``_single_tensor_nadam``: ``mu = beta1*(1 - 0.5*0.96**(t*momentum_decay))``,
    ``mu_next`` the same at ``t + 1``, ``mu_product`` after this step's multiplication."""
    lr, eps = float(group["lr"]), float(group["eps"])
    beta1, beta2 = (float(b) for b in group["betas"])
    weight_decay = float(group.get("weight_decay", 0.0))
    momentum_decay = float(group["momentum_decay"])
    decoupled = bool(group.get("decoupled_weight_decay", False))
    mu = _nadam_mu(beta1, momentum_decay, t)
    mu_next = _nadam_mu(beta1, momentum_decay, t + 1)
    mu_product = nadam_scalar_state(group, t)["mu_product"]
    mu_product_next = mu_product * mu_next
    return {
        "param_decay": 1.0 - lr * weight_decay if decoupled else 1.0,
        "weight_decay": 0.0 if decoupled else weight_decay,
        "beta1": beta1,
        "one_minus_beta1": 1.0 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1.0 - beta2,
        "bias_correction2": 1.0 - beta2 ** t,
        "eps": eps,
        "grad_coefficient": -lr * (1.0 - mu) / (1.0 - mu_product),
        "exp_avg_coefficient": (-lr * mu_next) / (1.0 - mu_product_next),
    }


def asgd_scalar_state(group, t):
    """``{"eta": ..., "mu": ...}``, torch's ASGD state after step ``t`` (``t = 0``: the
    initial ``eta = lr``, ``mu = 1``): ``eta = lr / (1 + lambd*lr*t)**alpha``,
    ``mu = 1 / max(1, t - t0)``."""
    lr = float(group["lr"])
    if t == 0:
        return {"eta": lr, "mu": 1.0}
    lambd, alpha, t0 = float(group["lambd"]), float(group["alpha"]), float(group["t0"])
    return {"eta": lr / ((1 + lambd * lr * t) ** alpha), "mu": 1 / max(1, t - t0)}


def asgd_scalars(group, t, fresh=frozenset()):
    """The scalars of ``fastopt.kernels.asgd`` for step ``t``: step ``t`` uses the
    ``eta`` and ``mu`` written by step ``t - 1`` (``lr`` and 1 at ``t = 1``)."""
    state = asgd_scalar_state(group, t - 1)
    eta, mu = float(state["eta"]), float(state["mu"])
    return {
        "weight_decay": float(group.get("weight_decay", 0.0)),
        "param_decay": 1.0 - float(group["lambd"]) * eta,
        "eta": eta,
        "mu": mu,
    }


def lion_scalars(group, t, fresh=frozenset()):
    """The scalars of ``fastopt.kernels.lion`` (the same at every step)."""
    lr = float(group["lr"])
    beta1, beta2 = (float(b) for b in group["betas"])
    return {
        "param_decay": 1.0 - lr * float(group.get("weight_decay", 0.0)),
        "lr": lr,
        "beta1": beta1,
        "one_minus_beta1": 1.0 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1.0 - beta2,
    }


SCALARS = {"nadam": nadam_scalars, "asgd": asgd_scalars, "lion": lion_scalars}
