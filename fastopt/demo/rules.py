"""The rules the demo races, their batching and their learning rates.

Every rule starts from the same weights and gets the same number of epochs (passes over
the 1,437 training images, i.e. the same number of gradient evaluations per example);
they differ in which examples make each gradient and in the update rule.

===================  ==============================================  ============  =====
name                 optimizer                                       batch         lr
===================  ==============================================  ============  =====
``gd``               ``SGD(lr)``                                     all 1,437     1
``sgd``              ``SGD(lr)``                                     1             0.03
``minibatch``        ``SGD(lr)``                                     --batch-size  1
``momentum``         ``SGD(lr, momentum=0.9)``                       --batch-size  0.1
``nesterov``         ``SGD(lr, momentum=0.9, nesterov=True)``        --batch-size  0.1
``adagrad``          ``Adagrad(lr)``                                 --batch-size  0.1
``rmsprop``          ``RMSprop(lr)`` (alpha 0.99)                    --batch-size  0.01
``rmsprop-nesterov`` ``RMSprop(lr, momentum=0.9, nesterov=True)``    --batch-size  0.001
``adam``             ``Adam(lr)`` (betas 0.9, 0.999)                 --batch-size  0.01
===================  ==============================================  ============  =====

How they were chosen: a 1-3-10 grid (1e-4 to 3), float32, seed 0, 30 epochs, batch 32,
ranked by the final training loss, then read against the loss curve:

* ``gd`` 1 and ``minibatch`` 1: the best; 2 already diverges.
* ``sgd`` 0.03: 0.1 ends lower but jumps between epochs; 0.3 diverges.
* ``momentum``, ``nesterov`` 0.1: the same effective step ``lr/(1-0.9) = 1`` as
  ``minibatch``; 0.3 ends lower but jumpier, 1 diverges.
* ``adagrad`` 0.1: 0.3 ends lower with a worse test accuracy; 1 is worse on both.
* ``rmsprop`` 0.01 (PyTorch's default), ``adam`` 0.01: 0.03 ends lower, jumpier.
* ``rmsprop-nesterov`` 0.001: 0.003 ends lower, but 0.01 already fails (Nesterov
  momentum 0.9 multiplies the step by about ten).

With these rates every rule but ``gd`` (30 steps in 30 epochs) reaches ~97% test accuracy
in the default run; the race is about how fast the training loss falls.

``adam-bf16state`` (``Adam(lr, state_dtype="bfloat16")``: the moments in bfloat16 with
stochastic rounding) races when ``--rules`` names it, against ``adam``. The registry's
other rules (``adamw``, ``adadelta``, ``adamax``, ``asgd``, ``lion``,
``nadam``, ``radam``, ``rprop``) race when ``--rules`` names them, on minibatches at their
torch default learning rate (untuned).
"""

from dataclasses import dataclass, field

import fastopt
from fastopt.rules import RULES as REGISTRY


@dataclass(frozen=True)
class Rule:
    """One contestant: ``batch`` is ``"full"``, ``"one"`` or ``"mini"`` (``--batch-size``)."""

    name: str
    optimizer: type
    batch: str
    lr: float
    options: dict = field(default_factory=dict)

    def make(self, flat):
        """The optimizer for the model buffer ``flat``."""
        return self.optimizer(flat, lr=self.lr, **self.options)

    def describe(self):
        options = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"{self.optimizer.__name__}(lr={self.lr:g}{options})"


RULES = {rule.name: rule for rule in [
    Rule("gd", fastopt.SGD, "full", 1.0),
    Rule("sgd", fastopt.SGD, "one", 0.03),
    Rule("minibatch", fastopt.SGD, "mini", 1.0),
    Rule("momentum", fastopt.SGD, "mini", 0.1, {"momentum": 0.9}),
    Rule("nesterov", fastopt.SGD, "mini", 0.1, {"momentum": 0.9, "nesterov": True}),
    Rule("adagrad", fastopt.Adagrad, "mini", 0.1),
    Rule("rmsprop", fastopt.RMSprop, "mini", 0.01),
    Rule("rmsprop-nesterov", fastopt.RMSprop, "mini", 0.001,
         {"momentum": 0.9, "nesterov": True}),
    Rule("adam", fastopt.Adam, "mini", 0.01),
]}

#: The default race: the seed's nine.
SEED_RACE = tuple(RULES)

#: Adam with its state in bfloat16 (``state_dtype``, stochastic rounding), on request.
RULES["adam-bf16state"] = Rule("adam-bf16state", fastopt.Adam, "mini", 0.01,
                               {"state_dtype": "bfloat16"})

#: Every other rule of the registry (AdamW, Adadelta, ..., Lion), raced on minibatches at
#: its own default learning rate when ``--rules`` names it; no rate was tuned for these.
RULES.update({name: Rule(name, fastopt.optim.CLASSES[rule.class_name], "mini",
                         rule.defaults["lr"])
              for name, rule in REGISTRY.items() if name not in RULES})
