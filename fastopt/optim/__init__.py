"""Optimizer classes: validation, state, step count, scalar precomputation, kernel calls."""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Optimizer
from .clip import clip_grad_norm
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["clip_grad_norm", "Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
