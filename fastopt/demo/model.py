"""A small MLP in plain NumPy whose parameters and gradients live in one flat buffer.

``inputs -> tanh(x @ w1 + b1) -> h @ w2 + b2 -> softmax cross-entropy`` (64-64-10 for
the digits set). Forward and backward are written out; the backward pass writes every
gradient straight into the ``fastopt.flatten`` gradient views (``np.matmul(..., out=)``),
so an optimizer given ``mlp.flat`` updates the whole model with one kernel call.
"""

import numpy as np

import fastopt

def initial_weights(sizes, dtype, seed):
    """Glorot-uniform weights and zero biases for layer ``sizes`` (e.g. ``(64, 64, 10)``),
    drawn from ``seed``: the same arrays for every rule in a race."""
    rng = np.random.default_rng(seed)
    arrays = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        arrays.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(dtype))
        arrays.append(np.zeros(fan_out, dtype=dtype))
    return arrays


class MLP:
    """tanh hidden layers and a softmax output, over a ``fastopt.Flat``.

    ``MLP(weights)`` copies ``weights`` (``[w1, b1, w2, b2, ...]``, one dtype; the demo's
    64-64-10 has two layers, ``fastopt bench --loops`` uses 512-1024-1024-10) into a fresh
    flat buffer: ``self.flat.params`` are the live parameters, ``self.flat.grads`` the
    gradients that :meth:`loss_and_grad` overwrites.
    """

    def __init__(self, weights):
        self.flat = fastopt.flatten([np.array(w) for w in weights])
        self.weights, self.biases = self.flat.params[0::2], self.flat.params[1::2]
        self.w1, self.b1 = self.weights[0], self.biases[0]
        self.w2, self.b2 = self.weights[-1], self.biases[-1]
        self.dtype = self.w1.dtype

    def logits(self, x):
        """The output logits and the input of every layer (``x`` then each hidden)."""
        inputs = [x]
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            inputs.append(np.tanh(inputs[-1] @ w + b))
        return inputs[-1] @ self.weights[-1] + self.biases[-1], inputs

    def loss(self, x, y):
        """Mean cross-entropy of the current parameters on ``(x, y)`` (no gradient)."""
        return _cross_entropy(self.logits(x)[0], y)[0]

    def accuracy(self, x, y):
        return float(np.mean(np.argmax(self.logits(x)[0], axis=1) == y))

    def loss_and_grad(self, x, y):
        """Mean cross-entropy on the batch ``(x, y)``; the gradient of that mean is written
        into ``self.flat.grads`` (overwriting it, so no zeroing is needed)."""
        logits, inputs = self.logits(x)
        loss, probs = _cross_entropy(logits, y)
        grads = self.flat.grads
        # d loss / d logits = (softmax - onehot) / n, computed in place in probs.
        probs[np.arange(len(y)), y] -= 1
        probs *= self.dtype.type(1.0 / len(y))
        delta = probs
        for layer in range(len(self.weights) - 1, -1, -1):
            np.matmul(inputs[layer].T, delta, out=grads[2 * layer])
            np.sum(delta, axis=0, out=grads[2 * layer + 1])
            if layer:
                hidden = inputs[layer]
                delta = delta @ self.weights[layer].T      # d loss / d hidden
                delta *= 1 - hidden * hidden               # tanh' = 1 - tanh^2
        return loss


def _cross_entropy(logits, y):
    """Mean softmax cross-entropy and the softmax probabilities (numerically stable)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[np.arange(len(y)), y]))
    exp /= total
    return loss, exp
