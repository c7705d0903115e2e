"""Adafactor (torch.optim's): factored second moments per parameter tensor, in four passes.

``adafactor`` (the first pass) is the kernel the rule binds by name; its variants are
:class:`AdafactorStep` objects that run it and then :func:`adafactor_columns`,
:func:`adafactor_norms` and :func:`adafactor_apply` over the buffer's member layout
(:class:`FactoredLayout`, from the members' shapes).

Members. A member of two or more dimensions, shape ``(*lead, R, C)``, is *factored*: its
``row_var`` has ``lead * R`` elements (torch's shape ``(*lead, R, 1)``), its ``col_var``
``lead * C`` (``(*lead, 1, C)``), and it has no ``variance``. A member of at most one
dimension (0-d and 1-d, as torch's ``grad.dim() > 1`` test) keeps a ``variance`` of its
own size and no ``row_var``/``col_var``. Each state buffer is the members' state laid end
to end, in member order (its offsets: :class:`FactoredLayout`).

Work rows. Every pass but the column pass works per *work row*: each row
``(*lead, r, :)`` of a factored member (``C`` elements), and chunks of ``BLOCK`` elements
of an unfactored one; it runs ``prange`` over *work units* (``unit_starts``): one chunk,
or ``max(1, BLOCK // C)`` consecutive rows of one factored member, so a unit's float64
lane accumulators are allocated once, not per short row. The column pass runs over
*column tasks*: ``CHUNK`` columns of one ``lead`` slice, summed over its ``R`` rows in row
order. Every loop indexes slices of its row/chunk from 0 (global indices kept LLVM's loop
vectorizer off). Every sum is float64, added in a fixed order per row/task (lanes: element
``j`` into lane ``j % ROW_LANES`` of a factored row, ``j % LANES`` of a chunk, the lanes
folded in a fixed tree), and the per-member norms add the per-row partials in row order:
the results are bitwise the same for any thread count, for the serial and parallel twins,
and for one flat buffer or the same tensors as separate arrays.
"""

import functools
import math

import numpy as np
from numba import prange
from numba.extending import register_jitable

from .config import kernel
from .halves import lerp, narrow_to, widen
from .reductions import BLOCK, fold_lanes
from .segmented import cast_like, lanes

# Compile-time options (bound to constants per variant; these defaults are never compiled).
zero_grad = write_copy = False

#: Columns per task of the column pass.
CHUNK = 256

#: Float64 lanes of a factored row's sums: element ``j`` of a row (counted from the row's
#: start) adds into lane ``j % ROW_LANES``, pieces in order, then the lanes fold in a fixed
#: halving tree (:func:`~fastopt.kernels.reductions.fold_lanes`). A power of two.
ROW_LANES = 16

#: The layout arrays every pass ends with (``Kernel.layout``).
LAYOUT = ("members", "work_starts", "col_starts", "unit_starts", "param_squares",
          "update_squares", "row_means")

# Columns of the ``members`` table (int64, one row per member).
P_OFF, SIZE, RV_OFF, CV_OFF, V_OFF, LEAD, ROWS, COLS, FACTORED, LEAD_START = range(10)


def factored(shape):
    """Whether a param of ``shape`` has factored state (torch: ``grad.dim() > 1``)."""
    return len(shape) >= 2


def state_shape(name, shape):
    """torch's shape of Adafactor's state ``name`` for a param of ``shape``; ``None`` where
    the param has no such state (``variance`` of a factored param, ``row_var``/``col_var``
    of a 0-d or 1-d one)."""
    shape = tuple(int(n) for n in shape)
    if name == "row_var":
        return (*shape[:-1], 1) if factored(shape) else None
    if name == "col_var":
        return (*shape[:-2], 1, shape[-1]) if factored(shape) else None
    if name == "variance":
        return None if factored(shape) else shape
    return shape


class FactoredLayout:
    """The layout of members of ``shapes`` laid end to end (see the module docstring):
    ``members`` (int64 table, one row per member: param offset, size, ``row_var``,
    ``col_var`` and ``variance`` offsets, lead, rows, cols, factored, first lead slice),
    ``work_starts`` and ``col_starts`` (cumulative work rows and column tasks per member,
    ``M + 1`` each), ``rows`` (work rows), ``leads`` (lead slices), ``total`` (elements),
    and ``totals``: state name -> elements of that flat state buffer."""

    def __init__(self, shapes):
        self.shapes = shapes
        table = np.zeros((len(shapes), 10), np.int64)
        work, cols, units = [0], [0], [0]
        offset = row_off = col_off = var_off = leads = 0
        for k, shape in enumerate(shapes):
            size = math.prod(shape)
            if factored(shape):
                lead, rows, columns = math.prod(shape[:-2]), shape[-2], shape[-1]
                table[k] = (offset, size, row_off, col_off, var_off, lead, rows, columns,
                            1, leads)
                row_off += lead * rows
                col_off += lead * columns
                leads += lead
                # an empty member's rows/columns still get their mean, 0/0 = NaN, as torch
                work.append(work[-1] + lead * rows)
                cols.append(cols[-1] + lead * -(-columns // CHUNK))
                per_unit = max(1, BLOCK // max(columns, 1))
                units.extend(range(work[-2] + per_unit, work[-1], per_unit))
                if work[-1] > work[-2]:
                    units.append(work[-1])
            else:
                table[k] = (offset, size, row_off, col_off, var_off, 1, 1, size, 0, leads)
                var_off += size
                work.append(work[-1] + -(-size // BLOCK))
                cols.append(cols[-1])
                units.extend(range(work[-2] + 1, work[-1] + 1))
            offset += size
        self.members = table
        self.work_starts = np.array(work, np.int64)
        self.col_starts = np.array(cols, np.int64)
        self.unit_starts = np.array(units, np.int64)
        for array in (table, self.work_starts, self.col_starts, self.unit_starts):
            array.flags.writeable = False
        self.rows, self.leads, self.total = work[-1], max(leads, 1), offset
        self.totals = {"row_var": row_off, "col_var": col_off, "variance": var_off}

    def __repr__(self):
        return f"<FactoredLayout of {len(self.shapes)} member(s), {self.total} elements>"


@functools.lru_cache(maxsize=1024)
def factored_layout(shapes):
    """The cached :class:`FactoredLayout` of ``shapes`` (a tuple of shape tuples)."""
    return FactoredLayout(tuple(tuple(int(n) for n in shape) for shape in shapes))


class AdafactorStep:
    """One variant of :func:`adafactor` (its ``flags``), a whole Adafactor step:
    ``step(param, grad, row_var, col_var, variance, param_copy, *scalars)`` with the
    scalars of :func:`adafactor` in order (the arguments the rule's binding gives), over
    the member layout of :meth:`over` (one 1-D member, the whole buffer, when none was
    given).

    1. :func:`adafactor` (work rows in parallel): ``row_var`` or ``variance`` updated,
       per row the float64 sum of squares of ``param``.
    2. :func:`adafactor_columns` (column tasks in parallel): ``col_var`` updated, and
       per lead slice ``max(mean(row_var), eps1)``.
    3. :func:`adafactor_norms` (work rows in parallel): per row the float64 sum of
       squares of the update.
    4. :func:`adafactor_apply`: per member ``alpha`` and ``denom``, then (work rows in
       parallel) the decay and the update, the half copy and ``zero_grad``.

    Each pass is a :class:`~fastopt.kernels.config.Variant` picking its twin by the
    buffer's size (``.serial`` and ``.parallel``: the step with every pass's serial or
    parallel twin). Scratch is allocated per call.
    """

    def __init__(self, first, where=None, twin=None):
        self.first = first
        self.columns = adafactor_columns._variant(())
        self.norms = adafactor_norms._variant(())
        self.last = adafactor_apply._variant((first.flags["zero_grad"],
                                              first.flags["write_copy"]))
        self.flags = first.flags
        self.layout = where
        self.twin = twin
        self._over = {}
        if twin is None:
            self.serial = AdafactorStep(first, where, "serial")
            self.parallel = AdafactorStep(first, where, "parallel")

    def __repr__(self):
        return f"<AdafactorStep {self.flags} over {self.layout} ({self.twin or 'by size'})>"

    def over(self, shapes):
        """This step over a buffer of members of ``shapes`` (a tuple of shape tuples, in
        order); ``None``: one 1-D member. Cached per ``shapes``."""
        if shapes is None:
            return self
        found = self._over.get(shapes)
        if found is None:
            found = self._over[shapes] = AdafactorStep(self.first, factored_layout(shapes),
                                                       self.twin)
        return found

    def __call__(self, param, grad, row_var, col_var, variance, param_copy, beta2_lerp,
                 eps1, eps1_squared, eps2, rho, d, param_decay, grad_factor):
        where = self.layout
        if where is None:
            where = factored_layout(((param.shape[0],),))
        if where.total != param.shape[0]:
            raise ValueError(f"Adafactor: the buffer has {param.shape[0]} elements, its "
                             f"member shapes add up to {where.total}")
        for name, buffer in (("row_var", row_var), ("col_var", col_var),
                             ("variance", variance)):
            if buffer.shape[0] != where.totals[name]:
                raise ValueError(f"Adafactor: {name} has {buffer.shape[0]} elements, the "
                                 f"members' {name} need {where.totals[name]}")
        param_squares, update_squares = np.empty(where.rows), np.empty(where.rows)
        row_means = np.empty(where.leads)
        layout = (where.members, where.work_starts, where.col_starts, where.unit_starts,
                  param_squares, update_squares, row_means)
        passes = (self.first, self.columns, self.norms, self.last)
        if self.twin is not None:
            passes = tuple(getattr(p, self.twin) for p in passes)
        first, columns, norms, last = passes
        first(param, grad, row_var, col_var, variance, param_copy, beta2_lerp, eps1,
              eps1_squared, eps2, rho, d, param_decay, grad_factor, *layout)
        columns(param, grad, row_var, col_var, beta2_lerp, eps1, grad_factor, *layout)
        norms(param, grad, row_var, col_var, variance, eps1_squared, grad_factor, *layout)
        last(param, grad, row_var, col_var, variance, param_copy, eps1_squared, eps2, rho, d,
             param_decay, grad_factor, *layout)


@register_jitable
def _work_row(w, members, work_starts):
    """``(member, its row)`` of work row ``w``."""
    k = np.searchsorted(work_starts, w, side="right") - 1
    return k, w - work_starts[k]


@register_jitable
def _span(k, r, members):
    """``(start, stop)`` in the param buffer of row ``r`` of member ``k``."""
    if members[k, FACTORED]:
        start = members[k, P_OFF] + r * members[k, COLS]
        return start, start + members[k, COLS]
    start = members[k, P_OFF] + r * BLOCK
    return start, min(start + BLOCK, members[k, P_OFF] + members[k, SIZE])


@register_jitable
def _update(p_like, g, v, eps1_squared):
    """One element of torch's ``var_estimate.clamp_(min=eps1*eps1).rsqrt_().mul_(grad)``
    (a NaN ``v`` stays NaN)."""
    if v < eps1_squared:
        v = eps1_squared
    one = cast_like(p_like, 1.0)
    return (one / np.sqrt(v)) * g


@kernel(flags=("zero_grad", "write_copy"), layout=LAYOUT, compound=AdafactorStep)
def adafactor(param, grad, row_var, col_var, variance, param_copy, beta2_lerp,
              eps1, eps1_squared, eps2, rho, d, param_decay, grad_factor, members,
              work_starts, col_starts, unit_starts, param_squares, update_squares,
              row_means):
    """Adafactor's first pass, per work row ``w`` (``prange`` over work units), with
    ``g = widen(grad[i]) * grad_factor`` (-1 in it for maximize)::

        param_squares[w] = sum over the row of float64(p)**2
        factored row r:    n = dtype(sqrt(sum over the row of float64(g)**2))
                           row_var[r] = lerp(row_var[r], n*n / C, w)
        unfactored chunk:  variance[i] = lerp(variance[i], g*g, w)

    torch's ``torch.norm(grad, dim=-1, keepdim=True).square_().div_(C)`` and ``lerp_``
    with weight ``w = t**beta2_decay``, passed as its lerp coefficient ``beta2_lerp``
    (:func:`~fastopt.rules.base.lerp_coefficient`, read by
    :func:`~fastopt.kernels.halves.lerp`); the norm is a float64 sum rounded once.
    Sums go lane by lane (``ROW_LANES`` lanes per factored row, ``LANES`` per unfactored
    chunk) and fold in a fixed tree.

    Scalars (of the buffers' dtype): ``beta2_lerp``, ``eps1`` (the
    dtype's machine epsilon when torch's ``eps[0]`` is None), ``eps1_squared``, ``eps2``,
    ``rho = min(lr, 1/sqrt(t))``, ``d``, ``param_decay = 1 - lr*weight_decay``,
    ``grad_factor``. Layout (``Kernel.layout``, given by :class:`AdafactorStep`): the
    :class:`FactoredLayout`'s ``members``, ``work_starts``, ``col_starts``,
    ``unit_starts``, and float64 scratch ``param_squares``, ``update_squares`` (one per
    work row), ``row_means`` (one per lead slice). From Python, call the kernel (or a
    variant) without the layout: an :class:`AdafactorStep` runs the four passes.
    """
    for unit in prange(unit_starts.shape[0] - 1):
        first, last = unit_starts[unit], unit_starts[unit + 1]
        k = np.searchsorted(work_starts, first, side="right") - 1
        if members[k, FACTORED]:
            cols = members[k, COLS]
            count = cast_like(grad_factor, cols)
            acc_p = np.empty(ROW_LANES)
            acc_g = np.empty(ROW_LANES)
            for w in range(first, last):
                r = w - work_starts[k]
                start = members[k, P_OFF] + r * cols
                for j in range(ROW_LANES):
                    acc_p[j] = 0.0
                    acc_g[j] = 0.0
                for piece in range(start, start + cols, ROW_LANES):
                    # slices indexed from 0: the loop vectorizes
                    end = min(piece + ROW_LANES, start + cols)
                    ps, gs = param[piece:end], grad[piece:end]
                    for j in range(ps.shape[0]):
                        p = np.float64(ps[j])
                        g = np.float64(widen(gs[j]) * grad_factor)
                        acc_p[j] += p * p
                        acc_g[j] += g * g
                param_squares[w] = fold_lanes(acc_p)
                norm = cast_like(grad_factor, np.sqrt(fold_lanes(acc_g)))
                at = members[k, RV_OFF] + r
                row_var[at] = lerp(row_var[at], norm * norm / count, beta2_lerp)
        else:
            start, stop = _span(k, first - work_starts[k], members)
            shift = members[k, V_OFF] - members[k, P_OFF]
            acc_p = lanes()
            width = acc_p.shape[0]
            for row in range(start, stop, width):
                end = min(row + width, stop)
                ps, gs = param[row:end], grad[row:end]
                vs = variance[row + shift:end + shift]
                for j in range(ps.shape[0]):
                    p = np.float64(ps[j])
                    acc_p[j] += p * p
                    g = widen(gs[j]) * grad_factor
                    vs[j] = lerp(vs[j], g * g, beta2_lerp)
            param_squares[first] = fold_lanes(acc_p)


@kernel(layout=LAYOUT)
def adafactor_columns(param, grad, row_var, col_var, beta2_lerp, eps1,
                      grad_factor, members, work_starts, col_starts, unit_starts,
                      param_squares, update_squares, row_means):
    """Adafactor's second pass, per column task (``prange``): ``CHUNK`` columns ``j`` of
    one lead slice ``l`` of a factored member, over its ``R`` rows in order::

        n = dtype(sqrt(sum over rows of float64(g)**2))
        col_var[l, j] = lerp(col_var[l, j], n*n / R, w)

    and, by the slice's first task, ``row_means[l] = max(dtype(mean(row_var[l])), eps1)``
    (float64 sum in eight interleaved chains added in a fixed tree; torch's
    ``row_var.mean(dim=-2).clamp_(min=eps1)``, NaN kept)."""
    for task in prange(col_starts[-1]):
        k = np.searchsorted(col_starts, task, side="right") - 1
        local = task - col_starts[k]
        rows, cols = members[k, ROWS], members[k, COLS]
        per_lead = -(-cols // CHUNK)
        lead, chunk = local // per_lead, local % per_lead
        first = chunk * CHUNK
        width = min(CHUNK, cols - first)
        acc = np.zeros(width)
        base = members[k, P_OFF] + lead * rows * cols + first
        for r in range(rows):
            row = base + r * cols
            # slices indexed from 0: the loop vectorizes
            gs = grad[row:row + width]
            for j in range(gs.shape[0]):
                g = np.float64(widen(gs[j]) * grad_factor)
                acc[j] += g * g
        at = members[k, CV_OFF] + lead * cols + first
        cvs = col_var[at:at + width]
        count = cast_like(grad_factor, rows)
        for j in range(cvs.shape[0]):
            norm = cast_like(grad_factor, np.sqrt(acc[j]))
            cvs[j] = lerp(cvs[j], norm * norm / count, beta2_lerp)
        if chunk == 0:
            rv = members[k, RV_OFF] + lead * rows
            rvs = row_var[rv:rv + rows]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
            i = 0
            while i + 8 <= rows:
                s0 += np.float64(rvs[i])
                s1 += np.float64(rvs[i + 1])
                s2 += np.float64(rvs[i + 2])
                s3 += np.float64(rvs[i + 3])
                s4 += np.float64(rvs[i + 4])
                s5 += np.float64(rvs[i + 5])
                s6 += np.float64(rvs[i + 6])
                s7 += np.float64(rvs[i + 7])
                i += 8
            while i < rows:
                s0 += np.float64(rvs[i])
                i += 1
            s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
            mean = cast_like(grad_factor, s / rows)
            if mean < eps1:
                mean = eps1
            row_means[members[k, LEAD_START] + lead] = mean


@kernel(layout=LAYOUT)
def adafactor_norms(param, grad, row_var, col_var, variance, eps1_squared, grad_factor,
                    members, work_starts, col_starts, unit_starts, param_squares,
                    update_squares, row_means):
    """Adafactor's third pass, per work row ``w`` (``prange`` over work units):
    ``update_squares[w]`` = the float64 sum of squares of the row's update ``u``
    (:func:`adafactor_apply`), lane by lane as the first pass's sums."""
    for unit in prange(unit_starts.shape[0] - 1):
        first, last = unit_starts[unit], unit_starts[unit + 1]
        k = np.searchsorted(work_starts, first, side="right") - 1
        if members[k, FACTORED]:
            cols, rows = members[k, COLS], members[k, ROWS]
            acc = np.empty(ROW_LANES)
            for w in range(first, last):
                r = w - work_starts[k]
                start = members[k, P_OFF] + r * cols
                lead = r // rows
                rv = row_var[members[k, RV_OFF] + r]
                mean = cast_like(grad_factor, row_means[members[k, LEAD_START] + lead])
                cv = members[k, CV_OFF] + lead * cols
                for j in range(ROW_LANES):
                    acc[j] = 0.0
                for piece in range(0, cols, ROW_LANES):
                    end = min(piece + ROW_LANES, cols)
                    gs = grad[start + piece:start + end]
                    cs = col_var[cv + piece:cv + end]
                    for j in range(gs.shape[0]):
                        g = widen(gs[j]) * grad_factor
                        u = np.float64(_update(grad_factor, g, rv * cs[j] / mean,
                                               eps1_squared))
                        acc[j] += u * u
                update_squares[w] = fold_lanes(acc)
        else:
            start, stop = _span(k, first - work_starts[k], members)
            shift = members[k, V_OFF] - members[k, P_OFF]
            acc = lanes()
            width = acc.shape[0]
            for row in range(start, stop, width):
                end = min(row + width, stop)
                gs, vs = grad[row:end], variance[row + shift:end + shift]
                for j in range(gs.shape[0]):
                    g = widen(gs[j]) * grad_factor
                    u = np.float64(_update(grad_factor, g, vs[j], eps1_squared))
                    acc[j] += u * u
            update_squares[first] = fold_lanes(acc)


@kernel(flags=("zero_grad", "write_copy"), layout=LAYOUT)
def adafactor_apply(param, grad, row_var, col_var, variance, param_copy, eps1_squared, eps2,
                    rho, d, param_decay, grad_factor, members, work_starts, col_starts,
                    unit_starts, param_squares, update_squares, row_means):
    """Adafactor's last pass. Per member ``k`` (``n`` elements), in float64 as torch's
    Python scalars, from its rows' partials added in row order, the norms rounded to the
    dtype as torch's ``.item()`` of a norm of that dtype::

        alpha = max(eps2, ||p|| / sqrt(n)) * rho          # ||p|| before the decay
        denom = max(1, ||u|| / (sqrt(n) * d))
        step  = dtype(-alpha / denom)

    (``max`` as Python's: a NaN norm gives ``eps2`` and 1.) Then per work row
    (``prange`` over work units), ``u`` recomputed exactly as :func:`adafactor_norms`
    computed it::

        p = p * param_decay        # only if param_decay != 1 (weight_decay != 0)
        param[i] = p + step * u
        param_copy[i] = half(param[i]); grad[i] = 0   # write_copy, zero_grad
    """
    count = members.shape[0]
    steps = np.empty(count)
    for k in range(count):
        p2 = 0.0
        u2 = 0.0
        for w in range(work_starts[k], work_starts[k + 1]):
            p2 += param_squares[w]
            u2 += update_squares[w]
        root = np.sqrt(np.float64(max(members[k, SIZE], 1)))
        rms = np.float64(cast_like(grad_factor, np.sqrt(p2))) / root
        e2 = np.float64(eps2)
        alpha = (rms if rms > e2 else e2) * np.float64(rho)
        ratio = np.float64(cast_like(grad_factor, np.sqrt(u2))) / (root * np.float64(d))
        denom = ratio if ratio > 1.0 else 1.0
        steps[k] = -alpha / denom
    one = cast_like(grad_factor, 1.0)
    for unit in prange(unit_starts.shape[0] - 1):
        first, last = unit_starts[unit], unit_starts[unit + 1]
        k = np.searchsorted(work_starts, first, side="right") - 1
        step = cast_like(grad_factor, steps[k])
        if members[k, FACTORED]:
            cols, rows = members[k, COLS], members[k, ROWS]
            for w in range(first, last):
                r = w - work_starts[k]
                start = members[k, P_OFF] + r * cols
                lead = r // rows
                rv = row_var[members[k, RV_OFF] + r]
                mean = cast_like(grad_factor, row_means[members[k, LEAD_START] + lead])
                cv = members[k, CV_OFF] + lead * cols
                # slices indexed from 0: the loop vectorizes
                ps, gs = param[start:start + cols], grad[start:start + cols]
                cs = col_var[cv:cv + cols]
                copies = param_copy[start:start + cols] if write_copy else param_copy
                for j in range(ps.shape[0]):
                    g = widen(gs[j]) * grad_factor
                    if zero_grad:
                        gs[j] = 0
                    u = _update(grad_factor, g, rv * cs[j] / mean, eps1_squared)
                    p = ps[j]
                    if param_decay != one:
                        p = p * param_decay
                    q = p + step * u
                    ps[j] = q
                    if write_copy:
                        copies[j] = narrow_to(param_copy, q)
        else:
            start, stop = _span(k, first - work_starts[k], members)
            shift = members[k, V_OFF] - members[k, P_OFF]
            ps, gs = param[start:stop], grad[start:stop]
            vs = variance[start + shift:stop + shift]
            copies = param_copy[start:stop] if write_copy else param_copy
            for j in range(ps.shape[0]):
                g = widen(gs[j]) * grad_factor
                if zero_grad:
                    gs[j] = 0
                u = _update(grad_factor, g, vs[j], eps1_squared)
                p = ps[j]
                if param_decay != one:
                    p = p * param_decay
                q = p + step * u
                ps[j] = q
                if write_copy:
                    copies[j] = narrow_to(param_copy, q)
