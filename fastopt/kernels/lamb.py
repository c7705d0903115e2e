"""LAMB: Adam's direction scaled per tensor by a trust ratio, in two passes over blocks.

``lamb`` (the first pass) is the kernel the rule binds by name; its variants are
:class:`LambStep` objects that run it and then :func:`lamb_apply` over the buffer's
member layout (:mod:`fastopt.kernels.segmented`).
"""

import numpy as np
from numba import prange

from .config import kernel
from .halves import narrow_to, widen
from .reductions import fold_lanes
from .segmented import block_span, cast_like, lanes, layout, member_sums

# Compile-time options (bound to constants per variant; these defaults are never compiled).
zero_grad = write_copy = False

#: The layout arrays both passes end with (``Kernel.layout``).
LAYOUT = ("offsets", "block_offsets", "param_squares", "update_squares")


class LambStep:
    """One variant of :func:`lamb` (its ``flags``), a whole LAMB step:
    ``step(param, grad, exp_avg, exp_avg_sq, param_copy, *scalars)`` with the scalars of
    :func:`lamb` in order (the arguments the rule's binding gives), over the member
    layout of :meth:`over` (a buffer of one member when none was given).

    1. :func:`lamb` (blocks in parallel): updates ``exp_avg`` and ``exp_avg_sq``, and
       writes per block the float64 sums of squares of ``param`` and of the update.
    2. :func:`lamb_apply`: per member, its blocks' sums added in order, the trust ratio;
       then (blocks in parallel) ``param -= lr * trust[member] * update``.

    Each pass is a :class:`~fastopt.kernels.config.Variant`: called from here it picks its
    twin by the buffer's size and honours a step's serial choice and the fork gate;
    ``.serial`` and ``.parallel`` are the same step with both passes' serial or parallel
    twin. The per-block scratch is allocated per call (no state shared between threads).
    """

    def __init__(self, first, where=None, twin=None):
        self.first = first
        self.second = lamb_apply._variant((first.flags["write_copy"],))
        self.flags = first.flags
        self.layout = where
        self.twin = twin
        self._over = {}
        if twin is None:
            self.serial = LambStep(first, where, "serial")
            self.parallel = LambStep(first, where, "parallel")

    def __repr__(self):
        return f"<LambStep {self.flags} over {self.layout} ({self.twin or 'by size'})>"

    def over(self, sizes):
        """This step over a buffer of members of ``sizes`` (a tuple of ints, in order);
        ``None``: one member (the whole buffer). Cached per ``sizes``."""
        if sizes is None:
            return self
        found = self._over.get(sizes)
        if found is None:
            found = self._over[sizes] = LambStep(self.first, layout(sizes), self.twin)
        return found

    def __call__(self, param, grad, exp_avg, exp_avg_sq, param_copy, beta1,
                 one_minus_beta1, beta2, one_minus_beta2, step_scale,
                 inv_sqrt_bias_correction2, eps, weight_decay, lr, grad_factor):
        where = self.layout
        if where is None:
            where = layout((param.shape[0],))
        elif where.total != param.shape[0]:
            raise ValueError(f"LAMB: the buffer has {param.shape[0]} elements, its member "
                             f"sizes add up to {where.total}")
        param_squares, update_squares = np.empty(where.blocks), np.empty(where.blocks)
        first, second = self.first, self.second
        if self.twin is not None:
            first, second = getattr(first, self.twin), getattr(second, self.twin)
        first(param, grad, exp_avg, exp_avg_sq, param_copy, beta1, one_minus_beta1, beta2,
              one_minus_beta2, step_scale, inv_sqrt_bias_correction2, eps, weight_decay, lr,
              grad_factor, where.offsets, where.block_offsets, param_squares,
              update_squares)
        second(param, exp_avg, exp_avg_sq, param_copy, step_scale, inv_sqrt_bias_correction2,
               eps, weight_decay, lr, where.offsets, where.block_offsets, param_squares,
               update_squares)


@kernel(flags=("zero_grad", "write_copy"), layout=LAYOUT, compound=LambStep)
def lamb(param, grad, exp_avg, exp_avg_sq, param_copy, beta1, one_minus_beta1, beta2,
         one_minus_beta2, step_scale, inv_sqrt_bias_correction2, eps, weight_decay, lr,
         grad_factor, offsets, block_offsets, param_squares, update_squares):
    """LAMB's first pass, per block ``b`` of the layout (``prange`` over blocks)::

        g = widen(grad[i]) * grad_factor                # -1 in it for maximize
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + ((1 - beta2) * g) * g           # torch's addcmul order
        u = (m * step_scale) / (sqrt(v) * inv_sqrt_bias_correction2 + eps) + weight_decay * p
        param_squares[b]  = sum over the block of float64(p)**2
        update_squares[b] = sum over the block of float64(u)**2
        grad[i] = 0                                     # only if zero_grad

    ``step_scale = 1 / (1 - beta1**t)``, ``inv_sqrt_bias_correction2 = 1/sqrt(1 - beta2**t)``
    (multiplied by, as Adam's kernel does: one division per element where dividing by
    both corrections takes three; the reference divides, which agrees to rounding); no ``weight_decay * p`` term when ``weight_decay``
    is 0 (an infinite ``p`` would make ``u`` NaN). ``lr`` is unused here (the second
    pass's). The block sums go lane by lane (:func:`~fastopt.kernels.segmented.lanes`)
    then fold in a fixed tree: bitwise the same for any thread count and layout.

    Arrays as :func:`fastopt.kernels.adam` (``grad`` may be bfloat16/float16 bits;
    ``param_copy`` is written by the second pass only). Layout (``Kernel.layout``, given
    by :class:`LambStep`): ``offsets, block_offsets`` of
    :func:`~fastopt.kernels.reductions.block_table`, and ``param_squares``,
    ``update_squares``: float64 scratch, one per block. From Python, call the kernel (or a
    variant) as any kernel, without the layout: a :class:`LambStep` runs both passes.
    """
    for b in prange(param_squares.shape[0]):
        _, start, stop = block_span(b, offsets, block_offsets)
        acc_p = lanes()
        acc_u = lanes()
        width = acc_p.shape[0]
        for row in range(start, stop, width):
            # slices indexed from 0: the loop vectorizes (no negative-index wraparound)
            end = min(row + width, stop)
            ps, gs = param[row:end], grad[row:end]
            ms, vs = exp_avg[row:end], exp_avg_sq[row:end]
            for j in range(ps.shape[0]):
                p = ps[j]
                g = widen(gs[j]) * grad_factor
                if zero_grad:
                    gs[j] = 0
                m = beta1 * ms[j] + one_minus_beta1 * g
                v = beta2 * vs[j] + one_minus_beta2 * g * g
                ms[j] = m
                vs[j] = v
                u = (m * step_scale) / (np.sqrt(v) * inv_sqrt_bias_correction2 + eps)
                if weight_decay != 0:
                    u = u + weight_decay * p
                wide_p = np.float64(p)
                wide_u = np.float64(u)
                acc_p[j] += wide_p * wide_p
                acc_u[j] += wide_u * wide_u
        param_squares[b] = fold_lanes(acc_p)
        update_squares[b] = fold_lanes(acc_u)


@kernel(flags=("write_copy",), layout=LAYOUT)
def lamb_apply(param, exp_avg, exp_avg_sq, param_copy, step_scale, inv_sqrt_bias_correction2,
               eps, weight_decay, lr, offsets, block_offsets, param_squares,
               update_squares):
    """LAMB's second pass: per member ``k``, ``||p||`` and ``||u||`` from its blocks'
    partials (added in block order, float64), ``trust = ||p|| / ||u||`` (1 where either
    is 0; NaN propagates, as optax), then per block (``prange``), with ``u`` recomputed
    from the updated ``m``, ``v`` and the not yet updated ``p`` exactly as the first pass
    computed it::

        param[i] = p - step * u        # step = lr * trust[k], rounded once to p's dtype
        param_copy[i] = half(param[i]) # only if write_copy
    """
    members = offsets.shape[0] - 1
    param_norms = np.empty(members)
    update_norms = np.empty(members)
    member_sums(param_squares, block_offsets, param_norms)
    member_sums(update_squares, block_offsets, update_norms)
    steps = np.empty(members)
    for k in range(members):
        param_norm = np.sqrt(param_norms[k])
        update_norm = np.sqrt(update_norms[k])
        trust = 1.0 if param_norm == 0 or update_norm == 0 else param_norm / update_norm
        steps[k] = np.float64(lr) * trust
    for b in prange(param_squares.shape[0]):
        k, start, stop = block_span(b, offsets, block_offsets)
        step = cast_like(lr, steps[k])
        # slices indexed from 0: the loop vectorizes (no negative-index wraparound)
        ps, ms, vs = param[start:stop], exp_avg[start:stop], exp_avg_sq[start:stop]
        copies = param_copy[start:stop] if write_copy else param_copy
        for j in range(ps.shape[0]):
            p = ps[j]
            u = (ms[j] * step_scale) / (np.sqrt(vs[j]) * inv_sqrt_bias_correction2 + eps)
            if weight_decay != 0:
                u = u + weight_decay * p
            q = p - step * u
            ps[j] = q
            if write_copy:
                copies[j] = narrow_to(param_copy, q)
