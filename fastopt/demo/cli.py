"""``fastopt demo``: options, checks, and the run (see :mod:`fastopt.demo`)."""

import contextlib
import os
import sys
import time

import numpy as np

from ..cli import UsageError, check_option
from ..threads import num_threads
from ..validation import check_int
from .rules import RULES, SEED_RACE

LAYERS = (64, 64, 10)
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 32


def configure(parser):
    parser.add_argument(
        "--rules", default=",".join(SEED_RACE), metavar="NAMES",
        help=f"comma-separated rules to race, from: {', '.join(RULES)} (default: the "
             f"seed's {', '.join(SEED_RACE)})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"passes over the training set, the same for every rule "
                             f"(default {DEFAULT_EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"minibatch size for the minibatch rules (default "
                             f"{DEFAULT_BATCH_SIZE}); gd uses all examples, sgd one")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the split, the initial weights and the shuffling (default 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the data, parameters and optimizer state (default float32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba threads for the run (default: leave as is); restored after")
    parser.add_argument("--plot", default="fastopt-demo.png", metavar="PATH",
                        help="PNG of training loss per epoch (default fastopt-demo.png)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the results (curves, losses, accuracy, times) as JSON")
    parser.add_argument("--surface", action="store_true",
                        help="instead of the digits race, plot each rule's path on the 2-D "
                             "Rosenbrock function (to --plot; sgd and minibatch are gd there)")


def run(args):
    rules = parse_rules(args.rules)
    low = [rule.name for rule in rules if rule.options.get("state_dtype")]
    if low and args.dtype != "float32":
        raise UsageError(f"--rules {low[0]} keeps float32 params' state in bfloat16; it "
                         f"needs --dtype float32, not {args.dtype}")
    check_option(check_int, args.epochs, "--epochs", 1)
    check_option(check_int, args.batch_size, "--batch-size", 1)
    check_option(check_int, args.seed, "--seed", 0)
    threads = check_threads(args.threads)
    tqdm = require_extras()
    check_writable(args.plot, "--plot")
    if args.json is not None:
        check_writable(args.json, "--json")

    if args.surface:
        return run_surface(rules, args)

    import numba

    from . import data as data_module, model, report, train

    dtype = np.dtype(args.dtype)
    with num_threads(threads) if threads is not None else contextlib.nullcontext():
        digits = data_module.load_digits(args.seed, dtype)
        weights = model.initial_weights(LAYERS, dtype, args.seed)
        started = time.perf_counter()
        with tqdm(total=args.epochs * len(rules), unit="epoch", file=sys.stderr,
                  leave=False, dynamic_ncols=True) as bar:
            def on_epoch():
                bar.update()
            train.warm_up(rules, weights)
            results = []
            for rule in rules:
                bar.set_description(rule.name)
                results.append(train.train(rule, weights, digits, args.epochs,
                                           args.batch_size, args.seed, on_epoch))
        elapsed = time.perf_counter() - started
        used_threads = numba.get_num_threads()

    title = (f"digits, MLP {'-'.join(map(str, LAYERS))}, {args.dtype}, "
             f"batch {args.batch_size}, seed {args.seed}")
    print(f"fastopt demo: {title}; {len(digits.y_train)} train / {len(digits.y_test)} test "
          f"images, {args.epochs} epochs, {used_threads} Numba threads")
    print(report.table(results))
    # Ties on accuracy go to the lower training loss: deterministic, unlike wall time.
    best = max(results, key=lambda r: (np.nan_to_num(r.test_accuracy),
                                       -np.nan_to_num(r.final_loss, nan=np.inf)))
    print(f"best test accuracy: {best.rule} {100 * best.test_accuracy:.1f}%; "
          f"race took {elapsed:.1f} s")
    report.plot(results, args.plot, title)
    print(f"plot: {args.plot}")
    if args.json is not None:
        settings = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                    "dtype": args.dtype, "threads": used_threads, "layers": list(LAYERS),
                    "train_size": len(digits.y_train), "test_size": len(digits.y_test)}
        report.write_json(results, args.json, settings)
        print(f"json: {args.json}")
    return 0


def run_surface(rules, args):
    from . import surface

    drawn = [r for r in rules if r.name not in surface.SAME_AS_GD]
    if not drawn:
        raise UsageError("--surface needs a rule other than sgd and minibatch in --rules")
    for r in rules:
        if r.name in surface.SAME_AS_GD:
            print(f"--surface: {r.name} follows gd's path on a deterministic function; "
                  "not drawn")
    paths = {}
    for r in drawn:
        lr = surface.LEARNING_RATES.get(r.name, r.lr)
        paths[r.name] = (lr, surface.path(r, lr))
    print(f"fastopt demo --surface: Rosenbrock from {surface.START}, {surface.STEPS} steps")
    print(f"{'rule':18s} {'lr':>6s}  {'final x':>9s} {'final y':>9s}  {'f':>9s}")
    for name, (lr, points) in paths.items():
        x, y = points[-1]
        print(f"{name:18s} {lr:6g}  {x:9.4f} {y:9.4f}  {surface.rosenbrock(x, y):9.3g}")
    surface.plot(paths, args.plot)
    print(f"plot: {args.plot}")
    if args.json is not None:
        import json
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({name: {"lr": lr, "path": points.tolist()}
                       for name, (lr, points) in paths.items()}, file)
        print(f"json: {args.json}")
    return 0


def parse_rules(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"--rules is empty; choose from {', '.join(RULES)}")
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise UsageError(f"unknown rule {unknown[0]!r} in --rules; choose from "
                         f"{', '.join(RULES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--rules names a rule twice: {text}")
    return [RULES[name] for name in names]


def check_threads(threads):
    if threads is None:
        return None
    import numba
    return check_option(check_int, threads, "--threads", 1, numba.config.NUMBA_NUM_THREADS)


def require_extras():
    """Import the demo's optional dependencies, or say how to install them; tqdm's class."""
    for module in ("sklearn", "matplotlib", "tqdm"):
        try:
            __import__(module)
        except ImportError as exc:
            raise UsageError(f"the demo needs {module} ({exc}); "
                             "install it with: pip install fastopt[demo]") from None
    from tqdm import tqdm
    return tqdm


def check_writable(path, option):
    """Fail now, before training, if ``path`` cannot be written."""
    if not path:
        raise UsageError(f"{option} needs a file path")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path!r} is not writable: {exc.strerror}") from None
    if not existed:
        os.remove(path)
