"""`hpo trial` end to end, through the real command line, on the tiny synthetic MNIST.

What a user looks at: the JSON result (metrics per model and split, the chosen α, the
seed, the data checksum, where the time went), the base model cache that makes a second
trial fast, and one-line errors for bad input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpo.cli import main

PHASES = {"data", "base_model", "activations", "sae_training", "scoring"}
GROUPS = {"red/0-4", "red/5-9", "green/0-4", "green/5-9"}
TOY_STUDY = Path(__file__).resolve().parents[1] / "studies" / "toy_superposition.toml"


def trial_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run `hpo trial ARGS --json` and return the one JSON object it prints."""
    assert main(["trial", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


def assert_metrics(metrics: dict[str, Any]) -> None:
    assert set(metrics["groups"]) == GROUPS
    for key in ("worst_group", "mean_group", "overall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["worst_group"] == min(metrics["groups"].values())


@pytest.mark.slow
def test_a_trial_reports_every_model_on_val_and_test_and_caches_the_base_model(
    tiny_study: Path,
    tiny_mnist: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(cache))
    args = (str(tiny_study), "--data-dir", str(tiny_mnist.path))

    result = trial_json(capsys, *args)

    assert result["params"]["n_components"] == 32 and result["params"]["steps"] == 60
    assert result["seed"] == 0 and result["task_seed"] == 0
    assert result["data_sha256"] == tiny_mnist.sha256
    assert set(result["timings"]) >= PHASES
    assert all(seconds >= 0 for seconds in result["timings"].values())
    models = result["models"]
    references = {"oracle", "last_layer", "dfr", "retrain_head", "leace"}
    controls = {"control_random", "control_svd"}  # the same edit, untrained decompositions
    assert set(models) == {"original", "debiased"} | references | controls
    assert result["lift"] == pytest.approx(
        models["debiased"]["val"]["worst_group"]
        - max(models[c]["val"]["worst_group"] for c in controls)
    )
    for name, by_split in models.items():
        assert set(by_split) == {"val", "test"}, name
        for metrics in by_split.values():
            assert_metrics(metrics)
    # α is chosen on val from the sweep, and the headline numbers are the debiased val ones
    curve = result["alpha_curve"]
    assert result["alpha"] in curve["alphas"]
    chosen = curve["alphas"].index(result["alpha"])
    assert curve["val_worst_group"][chosen] == max(curve["val_worst_group"])
    assert result["worst_group"] == models["debiased"]["val"]["worst_group"]
    assert result["ablated_components"] == {"fc1": [0, 1]}  # conditioned on the two colours
    assert result["faithfulness_error"] >= 0 and result["reconstruction_error"] >= 0

    bundle = cache / "base_models" / f"colored_mnist-{result['base_model']}.pt"
    assert bundle.is_file()
    written = bundle.stat().st_mtime_ns

    again = trial_json(capsys, *args)

    assert bundle.stat().st_mtime_ns == written  # read, not retrained
    assert again["base_model"] == result["base_model"]
    assert again["models"]["original"] == models["original"]
    assert again["models"]["oracle"] == models["oracle"]
    assert again["worst_group"] == result["worst_group"]  # same seed, same trial


@pytest.mark.slow
def test_seed_is_recorded_and_no_test_leaves_the_test_split_out(
    tiny_study: Path, tiny_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = trial_json(
        capsys, str(tiny_study), "--data-dir", str(tiny_mnist_dir), "--seed", "3", "--no-test"
    )

    assert result["seed"] == 3 and result["task_seed"] == 3
    assert result["params"]["seed"] == 3 and result["task"]["seed"] == 3
    assert all(set(by_split) == {"val"} for by_split in result["models"].values())


@pytest.mark.slow
def test_a_trial_prints_a_group_table_without_json(
    make_study: Callable[..., Path], tiny_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(params={"steps": 20})

    assert main(["trial", str(study), "--data-dir", str(tiny_mnist_dir)]) == 0

    out = capsys.readouterr().out
    assert "alpha" in out and "(chosen on val)" in out
    for label in (*GROUPS, "worst group", "mean group", "overall", "original", "oracle"):
        assert label in out, label
    assert out.splitlines()[-1].startswith("time: data")


def assert_one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_a_bad_study_file_is_one_line_and_exit_code_2(
    make_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(params={"stepz": 10})

    assert main(["trial", str(study), "--json"]) == 2

    assert_one_line_error(capsys, str(study), "params.stepz: unknown key")


def test_a_bad_override_and_a_missing_file_are_one_line_errors(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trial", str(tiny_study), "--set", "task.bias=2"]) == 2
    assert_one_line_error(capsys, "task.bias")

    assert main(["trial", str(tmp_path / "missing.toml")]) == 2
    assert_one_line_error(capsys, "no such study file")

    assert main(["trial"]) == 2
    assert_one_line_error(capsys, "give a study file")


def test_missing_mnist_without_network_says_how_to_supply_it(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-mnist"  # the download sources point at a closed port (conftest)

    assert main(["trial", str(tiny_study), "--data-dir", str(empty), "--json"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: Could not download MNIST file(s) train-images-idx3-ubyte")
    assert "Traceback" not in err and str(empty) in err
    assert "--data-dir" in err and "HPO_DATA_DIR" in err


@pytest.mark.slow
def test_a_short_toy_trial_is_faithful(capsys: pytest.CaptureFixture[str]) -> None:
    sets = [
        "task.train_steps=300",
        "task.batch_size=256",
        "task.n_samples=2000",
        "params.steps=300",
        "params.batch_size=256",
        "params.lr=1e-2",
        "params.eval_every=100",
    ]

    result = trial_json(capsys, str(TOY_STUDY), *(f"--set={s}" for s in sets))

    assert {"mmcs", "ml2r", "faithfulness_error", "reconstruction_error"} <= set(result)
    assert 0.0 <= result["mmcs"] <= 1.0 and result["ml2r"] > 0
    assert result["faithfulness_error"] < 1e-2
    assert result["params"]["steps"] == 300 and result["task"]["train_steps"] == 300
    assert set(result["timings"]) >= PHASES
    assert len(result["data_sha256"]) == 64


@pytest.mark.slow
def test_a_trial_over_the_study_limit_says_a_study_would_rank_it_infeasible(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hpo trial` scores what `[params]` gives; a faithfulness error over the study's
    `max_faithfulness_error` is said, since a study would rank that trial infeasible."""
    sets = ["task.train_steps=300", "task.n_samples=2000", "params.steps=100"]
    args = ["trial", str(TOY_STUDY), *(f"--set={s}" for s in sets), "--json"]

    assert main([*args, "--set=study.max_faithfulness_error=1e-9"]) == 0
    out, err = capsys.readouterr()
    error = json.loads(out)["faithfulness_error"]
    assert error > 1e-9
    assert (
        f"warning: {TOY_STUDY}: faithfulness_error {error:.4g} is over "
        "study.max_faithfulness_error 1e-09: in a study this trial is infeasible" in err
    )
    assert main([*args, "--set=study.max_faithfulness_error=1"]) == 0
    assert "infeasible" not in capsys.readouterr().err


@pytest.mark.slow
def test_two_layers_in_one_trial_and_a_layer_change_reuses_the_trained_models(
    tiny_study: Path,
    tiny_mnist_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    args = (str(tiny_study), "--data-dir", str(tiny_mnist_dir))
    one = trial_json(capsys, *args)

    both = trial_json(capsys, *args, "--set", "params.layers=fc2+fc1")

    assert both["layer"] == "fc1+fc2"  # in the order the model calls them
    assert set(both["ablated_components"]) == {"fc1", "fc2"}
    assert both["base_model"] == one["base_model"]
    assert both["models"]["original"] == one["models"]["original"]
    assert both["faithfulness_error"] >= one["faithfulness_error"] - 1e-9  # the worse layer

    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    later = trial_json(capsys, *args, "--set", "task.layer=fc2")  # a new bundle, same models

    assert later["base_model"] != one["base_model"]
    assert later["models"]["original"] == one["models"]["original"]
    now = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert all(now[p] == t for p, t in cached.items()), "the trained models were rewritten"
    assert len(now) > len(cached)  # the new bundle
    assert later["ablated_components"] == {"fc2": [0, 1]}

    assert main(["trial", *args, "--set", "params.layers=fc0"]) == 2
    assert_one_line_error(capsys, "params.layers", "'fc0'", "valid: fc1, fc2")
