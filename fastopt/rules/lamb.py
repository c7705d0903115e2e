"""LAMB: layer-wise adaptive moments, the trust ratio taken per parameter tensor."""

from ..kernels.lamb import lamb
from ..validation import check_lr, check_number
from .adam import bias_corrected
from .base import Rule, check_betas, check_flags


class LAMB(Rule):
    r"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training
    BERT in 76 minutes"), as optax's ``lamb``. Per parameter tensor::

        m = b1*m + (1-b1)*g ;  v = b2*v + ((1-b2)*g)*g
        u = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps) + weight_decay * p
        trust = ||p|| / ||u||      (1 where either norm is 0)
        p = p - lr * trust * u

    The norms are over each tensor (each member of a flat buffer, each param of a
    ``fastopt.torch`` run), never over the whole buffer: the front ends pass the member
    sizes (``sizes``), and the kernel sums squares per block and per member
    (:mod:`fastopt.kernels.segmented`), in float64, bitwise the same for any thread
    count and for one flat buffer or separate arrays.

    Differences from optax's ``lamb`` (``scale_by_adam(eps=1e-6)``, ``add_decayed_weights``,
    ``scale_by_trust_ratio``, ``scale_by_learning_rate``): none in the formula; optax's
    trust ratio is ``where(param_norm == 0 or update_norm == 0, 1, param_norm /
    update_norm)``, as here (a NaN norm gives a NaN ratio in both). optax takes the norms
    in the parameter's dtype; here they are float64 sums of squares (a float32 norm
    cannot overflow), so float32 results can differ from optax's by an ulp of the ratio.
    optax's ``lamb`` has ``mask`` (which params decay) and no ``maximize``; fastopt has
    no mask (use param groups with ``weight_decay=0``) and ``maximize`` negates the
    gradient, as the torch rules do. No clipping of the trust ratio (some LAMB
    implementations clip ``||p||`` to [0, 10]; optax and the paper's Algorithm 2 do not).

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0 (decoupled: in ``u``,
    so scaled by the trust ratio), maximize=False. State ``exp_avg``, ``exp_avg_sq``
    (and ``step``). torch.optim has no LAMB. Kernel: :func:`fastopt.kernels.lamb`.
    """

    name, class_name = "lamb", "LAMB"
    kernel = lamb
    per_tensor = True
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, maximize=False)
    sources = {"beta1": ("betas", "beta1"), "one_minus_beta1": ("betas", "1 - beta1"),
               "beta2": ("betas", "beta2"), "one_minus_beta2": ("betas", "1 - beta2"),
               "step_scale": ("betas", "1 / (1 - beta1**t)"),
               "inv_sqrt_bias_correction2": ("betas", "1 / sqrt(1 - beta2**t)")}

    def check(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_betas(group)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def scalars(self, group, t, fresh):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                    one_minus_beta2=1.0 - beta2, **self.step_scalars(group, t),
                    eps=group["eps"], weight_decay=group["weight_decay"], lr=group["lr"])

    def step_scalars(self, group, t):
        """Adam's :func:`~fastopt.rules.adam.bias_corrected` at lr 1 (the trust ratio
        scales the step): ``step_scale = 1 / (1 - beta1**t)``."""
        moving = bias_corrected(t, 1.0, group["betas"])
        return {"step_scale": moving["step_size"],
                "inv_sqrt_bias_correction2": moving["inv_sqrt_bias_correction2"]}
