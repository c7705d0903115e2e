"""The race's results: a text table, a PNG of the loss curves, a JSON file."""

import json
import math


def table(results):
    """One line per rule: lr, final training loss, test accuracy, wall time, and the share
    of the wall time spent inside ``opt.step``."""
    header = ("rule", "lr", "steps", "train loss", "test acc", "wall s", "opt share")
    rows = [(r.rule, f"{r.lr:g}", str(r.steps), f"{r.final_loss:.4g}",
             f"{100 * r.test_accuracy:.1f}%", f"{r.wall_time:.3f}",
             f"{100 * r.optimizer_share:.0f}%") for r in results]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(row):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot(results, path, title):
    """Training loss against epoch for every rule, log scale, written to ``path`` as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(figure)  # Agg, without touching pyplot's global backend
    axes = figure.subplots()
    for result in results:
        axes.plot(range(len(result.losses)), result.losses, label=f"{result.rule} (lr {result.lr:g})")
    axes.set_yscale("log")
    axes.set_xlabel("epoch (passes over the training set)")
    axes.set_ylabel("training loss (mean cross-entropy)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_json(results, path, settings):
    """``settings`` (the run's options) and, per rule, its curve, numbers and times."""
    document = {"settings": settings, "rules": [{
        "rule": r.rule, "optimizer": r.optimizer, "lr": r.lr, "steps": r.steps,
        "loss_curve": [_finite(v) for v in r.losses], "final_loss": _finite(r.final_loss),
        "test_accuracy": _finite(r.test_accuracy), "wall_time_s": r.wall_time,
        "step_time_s": r.step_time, "optimizer_share": _finite(r.optimizer_share),
    } for r in results]}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=1)
        file.write("\n")


def _finite(value):
    """JSON has no NaN or Infinity: a diverged value becomes ``null``."""
    value = float(value)
    return value if math.isfinite(value) else None
