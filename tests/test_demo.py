"""``fastopt demo``: the MLP's gradient, a short race end to end, and bad options."""

import json
import subprocess
import sys

import numba
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from fastopt.cli import main  # noqa: E402
from fastopt.demo.model import MLP, initial_weights  # noqa: E402
from fastopt.demo.rules import RULES  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def demo(tmp_path, *options, name="run"):
    """Run ``fastopt demo`` in-process; return (exit status, plot path, json path)."""
    plot, out = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    status = main(["demo", "--plot", str(plot), "--json", str(out), *options])
    return status, plot, out


@pytest.mark.parametrize("sizes", [(64, 64, 10), (12, 9, 7, 5)])
def test_mlp_gradient_matches_central_differences(sizes):
    # float64, every coordinate (4,810 for the demo's 64-64-10; a three-layer net as the
    # bench's loop uses), a batch of 5 examples. Central differences with h=1e-6 are
    # accurate to ~1e-9 here; a wrong term is off by far more.
    rng = np.random.default_rng(3)
    mlp = MLP(initial_weights(sizes, np.float64, seed=3))
    for bias in mlp.biases:  # nonzero biases, so their gradient paths are exercised
        bias[...] = rng.normal(0, 0.5, bias.shape)
    x, y = rng.random((5, sizes[0])), rng.integers(0, sizes[-1], 5)
    mlp.flat.buffers[0].grad.fill(np.nan)   # loss_and_grad must overwrite every element
    loss = mlp.loss_and_grad(x, y)
    assert loss == pytest.approx(mlp.loss(x, y), rel=1e-12)
    analytic = mlp.flat.buffers[0].grad.copy()
    params, h = mlp.flat.buffers[0].param, 1e-6
    numeric = np.empty_like(analytic)
    for i in range(params.size):
        old = params[i]
        params[i] = old + h
        up = mlp.loss(x, y)
        params[i] = old - h
        down = mlp.loss(x, y)
        params[i] = old
        numeric[i] = (up - down) / (2 * h)
    assert np.abs(analytic).max() > 1e-2
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_mlp_float32_gradient_agrees_with_float64():
    weights64 = initial_weights((64, 64, 10), np.float64, seed=1)
    rng = np.random.default_rng(1)
    x, y = rng.random((7, 64)), rng.integers(0, 10, 7)
    grads = []
    for dtype in (np.float32, np.float64):
        mlp = MLP([w.astype(dtype) for w in weights64])
        mlp.loss_and_grad(x.astype(dtype), y)
        assert mlp.flat.buffers[0].grad.dtype == dtype
        grads.append(mlp.flat.buffers[0].grad.astype(np.float64))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def test_short_race_writes_plot_and_json_and_repeats_exactly(tmp_path, capsys):
    import matplotlib.image

    rules = "gd,sgd,adam"
    status, plot, out = demo(tmp_path, "--rules", rules, "--epochs", "3", "--dtype", "float64")
    assert status == 0
    printed = capsys.readouterr().out
    for rule in rules.split(","):
        assert rule in printed
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(plot)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    first = json.loads(out.read_text())
    assert [r["rule"] for r in first["rules"]] == rules.split(",")
    assert first["settings"]["dtype"] == "float64"
    for r in first["rules"]:
        curve = r["loss_curve"]
        assert len(curve) == 4 and r["final_loss"] == curve[-1]
        assert curve[-1] < curve[0], f"{r['rule']} did not lower the loss: {curve}"
        assert 0 <= r["test_accuracy"] <= 1 and r["lr"] == RULES[r["rule"]].lr
        assert 0 < r["step_time_s"] <= r["wall_time_s"]
    steps = {r["rule"]: r["steps"] for r in first["rules"]}
    assert steps == {"gd": 3, "sgd": 3 * 1437, "adam": 3 * -(-1437 // 32)}
    assert len({tuple(r["loss_curve"]) for r in first["rules"]}) == 3  # rules differ

    status, _, out2 = demo(tmp_path, "--rules", rules, "--epochs", "3", "--dtype", "float64",
                           name="again")
    assert status == 0
    second = json.loads(out2.read_text())
    for a, b in zip(first["rules"], second["rules"]):
        assert a["loss_curve"] == b["loss_curve"]
        assert a["test_accuracy"] == b["test_accuracy"]


def test_seed_changes_the_run_and_threads_are_restored(tmp_path):
    before = numba.get_num_threads()
    curves = []
    for seed in ("0", "1"):
        status, _, out = demo(tmp_path, "--rules", "minibatch", "--epochs", "2", "--seed", seed,
                              "--threads", "1", name=f"seed{seed}")
        assert status == 0
        curves.append(json.loads(out.read_text())["rules"][0]["loss_curve"])
        assert numba.get_num_threads() == before
    assert curves[0] != curves[1]


def run_bad(capsys, *argv):
    """Exit status and stderr of ``fastopt demo`` with bad options (argparse or ours)."""
    try:
        status = main(["demo", *argv])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("argv, words", [
    (["--rules", "adam,bogus"], ["bogus", "adam", "rmsprop-nesterov"]),
    (["--rules", ","], ["empty"]),
    (["--epochs", "-3"], ["--epochs", "-3"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--threads", "0"], ["--threads"]),
    (["--dtype", "float16"], ["float16"]),
    (["--epochs", "many"], ["many"]),
    (["--rules", "adam-bf16state", "--dtype", "float64"], ["adam-bf16state", "float64"]),
])
def test_bad_options_fail_with_one_clear_line(capsys, tmp_path, argv, words):
    plot = tmp_path / "never.png"
    status, out, err = run_bad(capsys, "--plot", str(plot), *argv)
    assert status != 0 and out == ""
    assert "Traceback" not in err
    assert "error:" in err.splitlines()[-1]
    for word in words:
        assert word in err
    assert not plot.exists()


def test_unwritable_plot_path_fails_before_training(capsys, tmp_path):
    plot = tmp_path / "no" / "such" / "folder" / "out.png"
    status, out, err = run_bad(capsys, "--plot", str(plot), "--rules", "sgd", "--epochs", "1000")
    assert status == 2 and out == ""      # nothing trained: 1,000 sgd epochs would take a minute
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err
    status, out, err = run_bad(capsys, "--plot", str(tmp_path), "--epochs", "1000")
    assert status == 2 and "is a directory" in err and out == ""
    json_path = tmp_path / "missing" / "r.json"
    status, out, err = run_bad(capsys, "--plot", str(tmp_path / "ok.png"), "--json",
                               str(json_path), "--epochs", "1000")
    assert status == 2 and "--json" in err and not (tmp_path / "ok.png").exists()


def test_missing_extra_says_how_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)   # makes `import sklearn` fail
    status, out, err = run_bad(capsys, "--plot", str(tmp_path / "p.png"))
    assert status == 2 and "pip install fastopt[demo]" in err and "Traceback" not in err


def test_python_m_fastopt_demo_bad_rule_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastopt", "demo", "--rules", "nope"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"fastopt demo: error: unknown rule 'nope' in --rules; choose from {', '.join(RULES)}"]


def test_surface_plots_paths_that_descend(tmp_path, capsys):
    status, plot, out = demo(tmp_path, "--surface", "--rules", "sgd,momentum,adam")
    assert status == 0 and plot.read_bytes()[:8] == PNG_SIGNATURE
    paths = json.loads(out.read_text())
    assert set(paths) == {"momentum", "adam"}      # sgd is gd on a deterministic function
    from fastopt.demo.surface import START, rosenbrock
    for name, entry in paths.items():
        assert entry["path"][0] == list(START)
        assert rosenbrock(*entry["path"][-1]) < 1e-2 * rosenbrock(*START), name


def test_default_race_is_the_seeds_and_every_registered_rule_can_race(tmp_path, capsys):
    """The default race is the seed's nine; every other rule of the registry races when
    ``--rules`` names it (at its default lr), lowering the loss; --surface draws every
    named rule but sgd and minibatch (gd's path) and says so, none silently dropped."""
    from fastopt.demo.rules import SEED_RACE
    from fastopt.rules import RULES as REGISTRY

    assert SEED_RACE == ("gd", "sgd", "minibatch", "momentum", "nesterov", "adagrad",
                         "rmsprop", "rmsprop-nesterov", "adam")
    others = [name for name in REGISTRY if name not in SEED_RACE]
    assert set(others) <= set(RULES)
    status, _, out = demo(tmp_path, "--rules", ",".join(others), "--epochs", "2")
    assert status == 0
    results = json.loads(out.read_text())["rules"]
    assert [r["rule"] for r in results] == others
    for r in results:
        assert r["lr"] == REGISTRY[r["rule"]].defaults["lr"]
        assert r["loss_curve"][-1] < r["loss_curve"][0], r["rule"]
    status, _, out = demo(tmp_path, "--surface", "--rules", "minibatch,lion,rprop",
                          name="surface")
    assert status == 0
    assert set(json.loads(out.read_text())) == {"lion", "rprop"}
    assert "minibatch follows gd's path" in capsys.readouterr().out


def test_bf16_state_adam_ends_within_one_percent_of_adam(tmp_path):
    """Issue 13: Adam with its state in bfloat16 (stochastic rounding) trains the demo's
    MLP to a final training loss within 1% of float32-state Adam's (30 epochs)."""
    status, _, out = demo(tmp_path, "--rules", "adam,adam-bf16state")
    assert status == 0
    full, low = json.loads(out.read_text())["rules"]
    assert (full["rule"], low["rule"]) == ("adam", "adam-bf16state")
    assert low["loss_curve"][-1] < 0.1 * low["loss_curve"][0]
    assert abs(low["loss_curve"][-1] - full["loss_curve"][-1]) < 0.01 * full["loss_curve"][-1]
