"""One validation module (``fastopt.validation``) behind every public entry (issue 12,
class 7): the same bad value gets the same error from the optimizers, fastopt.torch, the
loop options, the schedules, ``clip_grad_norm``, ``num_threads``, the command line and the
environment; NumPy scalars are numbers, bools are not, a huge int is a ValueError."""

import fractions
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastopt
from fastopt.cli import main

HUGE = 10 ** 400


def positive_number_entries():
    """Every public entry that takes a positive real number, as ``value -> None``."""
    entries = {
        "SGD lr": lambda v: fastopt.SGD([np.ones(2)], lr=v),
        "Adam eps": lambda v: fastopt.Adam([np.ones(2)], eps=v),
        "clip_grad_norm option": lambda v: fastopt.Adam([np.ones(2)], clip_grad_norm=v),
        "grad_scale option": lambda v: fastopt.Adam([np.ones(2)], grad_scale=v),
        "schedules.constant": lambda v: fastopt.schedules.constant(v),
        "schedules.cosine min_lr": lambda v: fastopt.schedules.cosine(1.0, 10, min_lr=v),
        "clip_grad_norm()": lambda v: fastopt.clip_grad_norm([np.ones(2)], v),
    }
    try:
        import torch

        import fastopt.torch as ft
    except ImportError:
        return entries
    entries["fastopt.torch.SGD lr"] = lambda v: ft.SGD([torch.nn.Parameter(torch.ones(2))],
                                                       lr=v)
    return entries


ENTRIES = positive_number_entries()
BAD = [("0.5", TypeError, "must be a real number"),
       (True, TypeError, "must be a real number"),
       (np.bool_(True), TypeError, "must be a real number"),
       (None, TypeError, "must be a real number"),
       (HUGE, ValueError, r"Invalid .*: an integer of about 40[01] digits \(must be"),
       (float("nan"), ValueError, r"Invalid .*: nan \(must be"),
       (-1.0, ValueError, r"Invalid .*: -1.0 \(must be")]


BAD_IDS = ["str", "bool", "np.bool_", "None", "huge-int", "nan", "negative"]
BAD_CASES = [pytest.param(entry, *bad, id=f"{entry}-{name}") for entry in ENTRIES
             for bad, name in zip(BAD, BAD_IDS)
             if not (entry == "clip_grad_norm option" and bad[0] is None)]   # None: no clip


@pytest.mark.parametrize("entry, value, error, message", BAD_CASES)
def test_every_entry_refuses_a_bad_number_the_same_way(entry, value, error, message):
    with pytest.raises(error, match=message):
        ENTRIES[entry](value)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(1), 1,
                                   fractions.Fraction(1, 2)],
                         ids=["np.float32", "np.float64", "np.int64", "int", "Fraction"])
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_every_entry_takes_any_real_number(entry, value):
    ENTRIES[entry](value)


def test_clip_grad_norm_takes_a_numpy_scalar_and_clips_as_with_a_float():
    a, b = [np.array([3.0, 4.0])], [np.array([3.0, 4.0])]
    assert fastopt.clip_grad_norm(a, np.float32(1.0)) == fastopt.clip_grad_norm(b, 1.0) == 5.0
    np.testing.assert_array_equal(a[0], b[0])


def test_num_threads_types_and_range():
    limit = numba.config.NUMBA_NUM_THREADS
    with fastopt.num_threads(np.int64(1)):
        assert numba.get_num_threads() == 1
    for bad in (1.0, True, "1", None):
        with pytest.raises(TypeError, match="num_threads must be an integer"):
            with fastopt.num_threads(bad):
                pass
    for bad in (0, limit + 1, HUGE):
        with pytest.raises(ValueError,
                           match=rf"Invalid num_threads: .* \(must be in \[1, {limit}\]\)"):
            with fastopt.num_threads(bad):
                pass


def test_schedule_steps_are_checked_and_growth_overflows_to_inf():
    schedule = fastopt.schedules.exponential(1.0, gamma=2.0)
    assert schedule(5000) == float("inf")            # was OverflowError
    for bad in (HUGE, -1):
        with pytest.raises(ValueError, match="Invalid step"):
            schedule(bad)
    with pytest.raises(TypeError, match="step must be an integer"):
        schedule(1.0)
    with pytest.raises(ValueError, match="Invalid total_steps"):
        fastopt.schedules.cosine(1.0, total_steps=HUGE)


def test_messages_read_as_torchs():
    with pytest.raises(ValueError, match=r"^Invalid lr: -1.0 \(must be >= 0.0\)$"):
        fastopt.SGD([np.ones(2)], lr=-1.0)
    with pytest.raises(ValueError, match=r"^Invalid alpha: 1.5 \(must be in \[0.0, 1.0\]\)$"):
        fastopt.RMSprop([np.ones(2)], alpha=1.5)


@pytest.mark.parametrize("command", [["demo", "--threads", "0"], ["bench", "--threads", "0"]])
def test_command_lines_say_what_the_api_says(command, capsys):
    limit = numba.config.NUMBA_NUM_THREADS
    assert main(command) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"fastopt {command[0]}: error: Invalid --threads: 0 "
                     f"(must be in [1, {limit}])")


@pytest.mark.parametrize("value", ["lots", "-5", "1.5e4"])
def test_bad_parallel_threshold_warns_naming_the_variable_and_import_works(value):
    code = "import fastopt.kernels as k; print(k.PARALLEL_THRESHOLD)"
    env = {**os.environ, "FASTOPT_PARALLEL_THRESHOLD": value}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(1 << 16)
    assert f"Invalid FASTOPT_PARALLEL_THRESHOLD: {value!r}" in done.stderr or (
        f"Invalid FASTOPT_PARALLEL_THRESHOLD: {value} " in done.stderr)
    assert "using the default, 65536" in done.stderr


def test_good_parallel_threshold_is_used():
    code = "import fastopt.kernels as k; print(k.PARALLEL_THRESHOLD)"
    env = {**os.environ, "FASTOPT_PARALLEL_THRESHOLD": " 1000 "}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "1000", "")
