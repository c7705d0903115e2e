"""The ``fastopt`` command: ``fastopt demo`` (the main job) and ``fastopt bench``.

Each subcommand lives in its own module with ``configure(parser)`` and ``run(args)``;
they are imported only when chosen, so ``fastopt --help`` stays fast.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("fastopt.demo.cli", "train a small network on the digits set with every rule and compare"),
    "bench": ("fastopt.bench.cli", "measure kernel throughput against NumPy, torch.optim and memory bandwidth"),
}


class UsageError(Exception):
    """A bad option: printed as one line, exit status 2, no traceback."""


def check_option(check, value, option, *args, **kwargs):
    """``check(value, option, *args, **kwargs)`` (a :mod:`fastopt.validation` check, so the
    command line says what the Python API says), its ``TypeError``/``ValueError`` turned
    into a :class:`UsageError`; returns what ``check`` returns."""
    try:
        return check(value, option, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fastopt", description="fastopt: optimizer update rules compiled with Numba. "
        "'fastopt demo' is the main job; 'fastopt bench' measures the kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = (sys.argv[1:] if argv is None else list(argv))[:1]
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in wanted:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0
    except UsageError as exc:
        print(f"fastopt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
