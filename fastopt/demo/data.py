"""The digits set (scikit-learn's bundled 1,797 8x8 images) with a fixed split per seed.

Needs the ``demo`` extra (``pip install fastopt[demo]``); nothing is downloaded: the
images ship inside scikit-learn.
"""

from dataclasses import dataclass

import numpy as np

TEST_FRACTION = 0.2


@dataclass
class Digits:
    """Train and test arrays: ``x_*`` are ``(n, 64)`` pixels scaled to [0, 1] in the
    chosen dtype, ``y_*`` the labels 0..9 (int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(seed, dtype):
    """The digits set split 80/20 (stratified) by ``seed``: 1,437 train, 360 test."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    images, labels = sklearn_digits(return_X_y=True)
    x = (images / 16.0).astype(dtype)
    x_train, x_test, y_train, y_test = train_test_split(
        x, labels.astype(np.int64), test_size=TEST_FRACTION, random_state=seed,
        stratify=labels)
    return Digits(np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test)
