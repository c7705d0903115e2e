"""NAdam: Adam with Nesterov momentum and torch's momentum schedule."""

from ..kernels.nadam import nadam
from ..validation import check_lr, check_number
from .base import Rule, check_betas, check_flags

#: (beta1, momentum_decay) -> {t: mu_product after step t}: the products of the steps
#: computed last (a window of :data:`_WINDOW` steps, and step 0), so that a step, the
#: steps computed ahead of it (:class:`~fastopt.rules.base.ScalarsAhead`) and its scalar
#: state each cost O(1) in turn (a memo: the rule's results never depend on it).
_MU_PRODUCTS = {}
_WINDOW = 256


def _mu(beta1, momentum_decay, t):
    """torch's momentum coefficient for step ``t``: ``beta1*(1 - 0.5*0.96**(t*psi))``."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))


def mu_product(beta1, momentum_decay, t):
    """``mu_1 * ... * mu_t`` (1 at ``t = 0``), multiplied in torch's order, in float64;
    resumed from the latest product memoised before ``t`` for the same ``(beta1,
    momentum_decay)``, bitwise as a fresh product from step 1."""
    key = (beta1, momentum_decay)
    known = _MU_PRODUCTS.get(key)
    if known is None:
        if len(_MU_PRODUCTS) > 64:
            _MU_PRODUCTS.clear()
        known = _MU_PRODUCTS[key] = {0: 1.0}
    product = known.get(t)
    if product is not None:
        return product
    latest = next(reversed(known))   # (steps are memoised in increasing order)
    start = latest if latest < t else max(k for k in known if k < t)
    product = known[start]
    if start < latest:   # an earlier step than the window holds: start the window there
        known = _MU_PRODUCTS[key] = {k: v for k, v in known.items() if k <= start}
    for k in range(start + 1, t + 1):
        product = product * _mu(beta1, momentum_decay, k)
        if k > t - _WINDOW:
            known[k] = product
    if len(known) > 2 * _WINDOW:   # keep step 0 and the latest steps
        for k in list(known)[1:-_WINDOW]:
            del known[k]
    return product


class NAdam(Rule):
    r"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam"), as torch.optim.

    ``mu_t = b1*(1 - 0.5*0.96**(t*momentum_decay))``, ``P_t = mu_1*...*mu_t``;
    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``; ``d = sqrt(v/(1 - b2**t)) + eps``;
    ``p -= lr*(1-mu_t)/(1-P_t) * g/d + lr*mu_{t+1}/(1-P_t*mu_{t+1}) * m/d``.
    With ``decoupled_weight_decay`` (torch's "NAdamW") ``p *= 1 - lr*weight_decay`` first and
    no L2 term.

    torch keeps ``mu_product`` (``P_t``) as per-parameter state; fastopt derives it from the
    step count in float64 (torch multiplies it up in float32: a relative gap of ~1e-7 that
    reaches the update only through ``1 - P_t``) and writes it into state dicts as torch
    does. A state dict's ``mu_product`` is accepted and recomputed from its ``step``, so
    changing ``betas`` or ``momentum_decay`` mid-run restarts the product's history.

    Defaults as ``torch.optim.NAdam``: lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False.
    State ``exp_avg``, ``exp_avg_sq``, ``mu_product``. Kernel: :func:`fastopt.kernels.nadam`.
    """

    name, class_name, torch_class = "nadam", "NAdam", "NAdam"
    kernel = nadam
    defaults = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False)
    scalar_state_names = ("mu_product",)
    sources = {"param_decay": ("lr", "1 - lr * weight_decay"), "beta1": ("betas", "beta1"),
               "one_minus_beta1": ("betas", "1 - beta1"), "beta2": ("betas", "beta2"),
               "one_minus_beta2": ("betas", "1 - beta2"),
               "bias_correction2": ("betas", "1 - beta2**t"),
               "grad_coefficient": ("lr", "-lr * (1 - mu_t) / (1 - mu_product)"),
               "exp_avg_coefficient": ("lr", "-lr * mu_next / (1 - mu_product * mu_next)")}

    def check(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_number(group, "momentum_decay", 0.0)
        check_betas(group)
        check_flags(group, "decoupled_weight_decay", "maximize")

    def state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def scalar_state(self, group, t):
        return {"mu_product": mu_product(group["betas"][0], group["momentum_decay"], t)}

    def scalars(self, group, t, fresh):
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        decoupled = group["decoupled_weight_decay"]
        moving = self.step_scalars(group, t)
        return dict(param_decay=1.0 - lr * wd if decoupled else 1.0,
                    weight_decay=0.0 if decoupled else wd, beta1=beta1,
                    one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                    bias_correction2=moving["bias_correction2"], eps=group["eps"],
                    grad_coefficient=moving["grad_coefficient"],
                    exp_avg_coefficient=moving["exp_avg_coefficient"])

    def step_scalars(self, group, t):
        lr, (beta1, beta2) = group["lr"], group["betas"]
        decay = group["momentum_decay"]
        mu, mu_next = _mu(beta1, decay, t), _mu(beta1, decay, t + 1)
        product = mu_product(beta1, decay, t)
        return {"bias_correction2": 1.0 - beta2 ** t,
                "grad_coefficient": -lr * (1.0 - mu) / (1.0 - product),
                "exp_avg_coefficient": (-lr * mu_next) / (1.0 - product * mu_next)}
