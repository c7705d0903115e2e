"""``fastopt demo --surface``: each rule's path on the 2-D Rosenbrock function.

``f(x, y) = (1 - x)^2 + 100 (y - x^2)^2``, minimum 0 at (1, 1), from (-1.5, 2) for
``STEPS`` steps, float64. The function is deterministic, so ``sgd`` and ``minibatch`` would
repeat ``gd``'s path and are left out. Learning rates (the MLP's would diverge here:
the curvature reaches ~2,700 along the valley walls) were chosen on a 1-3-10 grid from
1e-4 to 1 as the one with the lowest final ``f`` whose path stays on the plot, except
``adam``: 0.3 and 1 end lower still, by leaping across the valley. Rules not in the table
(the registry's others, when ``--rules`` names them) use their race rate, untuned here.

==================== ======
rule                 lr
==================== ======
``gd``               1e-3
``momentum``         1e-3
``nesterov``         1e-3
``adagrad``          1
``rmsprop``          1e-2
``rmsprop-nesterov`` 1e-3
``adam``             0.1
==================== ======
"""

import numpy as np

import fastopt

STEPS = 1000
START = (-1.5, 2.0)
LEARNING_RATES = {"gd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 1.0,
                  "rmsprop": 1e-2, "rmsprop-nesterov": 1e-3, "adam": 0.1}

#: Rules whose path here is gd's (the function is deterministic): not drawn, and said so.
#: Every other rule is drawn, at its rate above or else at its race rate.
SAME_AS_GD = ("sgd", "minibatch")


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(point, out):
    x, y = point
    out[0] = -2 * (1 - x) - 400 * x * (y - x * x)
    out[1] = 200 * (y - x * x)


def path(rule, lr, steps=STEPS):
    """The ``(steps + 1, 2)`` array of points visited by ``rule`` (a :class:`Rule`) at ``lr``."""
    flat = fastopt.flatten([np.array(START, dtype=np.float64)])
    opt = rule.optimizer(flat, lr=lr, **rule.options)
    point, grad = flat.params[0], flat.grads[0]
    points = np.empty((steps + 1, 2))
    points[0] = point
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, steps + 1):
            rosenbrock_grad(point, grad)
            opt.step()
            points[k] = point
    return points


def plot(paths, file_path):
    """Contours of ``log f`` and one line per rule's path, written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    xs, ys = np.meshgrid(np.linspace(-2, 2, 400), np.linspace(-1, 3, 400))
    axes.contour(xs, ys, np.log10(rosenbrock(xs, ys) + 1e-3), levels=25, cmap="Greys",
                 linewidths=0.6)
    for name, (lr, points) in paths.items():
        axes.plot(points[:, 0], points[:, 1], lw=1.2, label=f"{name} (lr {lr:g})")
    axes.plot(*START, "ko")
    axes.plot(1, 1, "k*", markersize=12)
    axes.set_xlim(-2, 2)
    axes.set_ylim(-1, 3)
    axes.set_title(f"Rosenbrock, {STEPS} steps from {START}; minimum at (1, 1)")
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(file_path, format="png")
