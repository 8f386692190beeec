"""`hpo export` on a tiny colored-MNIST study run in this process.

What a user relies on: the exported model is the base architecture with one edited
weight, loads with strict=True, and scores exactly what the trial recorded; the config
reruns the trial; nothing half-written is left on error; the storage password stays put.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from helpers import run_tiny_study

from hpo.cli import main
from hpo.outputs.rescore import rescore
from hpo.service.study_file import stored_study_file

# The study file names a PostgreSQL server with a password; the run itself used
# --storage on SQLite. The password must never reach an exported file.
SECRET = "s3cret-pw-in-study-file"
FILES = {"config.toml", "config.json", "sae.pt", "model.pt", "metrics.json", "README.md"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_mnist_dir: Path) -> str:
    root = tmp_path_factory.mktemp("export")
    return run_tiny_study(
        root,
        tiny_mnist_dir,
        "tiny",
        storage={"url": f"postgresql+psycopg://hpo:{SECRET}@db.invalid:5432/hpo"},
    )


@pytest.fixture(scope="module")
def exported(tiny: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["export", "tiny", "--storage", tiny, "--out", str(out)]) == 0
    return out


def best_trial(url: str, name: str = "tiny") -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name=name, storage=url).best_trial


def val_and_test_images(task: Any, data_dir: Path) -> dict[str, Any]:
    from hpo.data.colored_mnist import build_splits
    from hpo.data.mnist import load_mnist

    m = load_mnist(data_dir, progress=False)
    splits = build_splits(task, m.train_images, m.train_labels, m.test_images, m.test_labels)
    return {name: splits[name] for name in ("val", "test")}


def accuracies_from_scratch(model: torch.nn.Module, split: Any, task: Any) -> dict[str, Any]:
    """Per-group accuracy of `model` run on the images themselves, with numpy."""
    from hpo.data.colored_mnist import make_groups

    with torch.no_grad():
        logits = model(torch.from_numpy(split.images).float() / 255.0)
    correct = logits.argmax(1).numpy() == split.digits
    groups = make_groups(task)
    ids = groups.ids(split.digits, split.colors)
    acc = {name: float(correct[ids == i].mean()) for i, name in enumerate(groups.names)}
    return {
        "groups": acc,
        "worst_group": min(acc.values()),
        "mean_group": float(np.mean(list(acc.values()))),
    }


def test_export_writes_every_file_and_the_model_scores_what_the_trial_recorded(
    tiny: str, exported: Path, tiny_mnist_dir: Path
) -> None:
    from hpo.models.classifiers import ColorMnistMLP
    from hpo.sae.model import FaithfulSAE

    assert {p.name for p in exported.iterdir()} == FILES
    trial = best_trial(tiny)
    study = optuna.load_study(study_name="tiny", storage=tiny)
    task = stored_study_file(study.user_attrs["study_file"], "tiny").task

    model = ColorMnistMLP()
    model.load_state_dict(torch.load(exported / "model.pt", weights_only=True), strict=True)
    model.eval()
    images = val_and_test_images(task, tiny_mnist_dir)
    val = accuracies_from_scratch(model, images["val"], task)
    assert val["worst_group"] == pytest.approx(trial.user_attrs["worst_group"], abs=1e-12)
    assert val["mean_group"] == pytest.approx(trial.user_attrs["mean_group"], abs=1e-12)
    assert val["groups"] == pytest.approx(trial.user_attrs["val_groups"]["debiased"], abs=1e-12)
    assert val["worst_group"] == trial.user_attrs["worst_group"]
    # what the study ranks by: worst group, ties broken below one sample's worth
    assert 0 <= trial.value - val["worst_group"] < 0.01

    metrics = json.loads((exported / "metrics.json").read_text())
    test = accuracies_from_scratch(model, images["test"], task)
    assert test["groups"] == pytest.approx(
        metrics["models"]["debiased"]["test"]["groups"], abs=1e-12
    )
    assert set(metrics["models"]) == {
        "original",
        "debiased",
        "control_random",
        "control_svd",
        "oracle",
        "last_layer",
        "dfr",
        "retrain_head",
        "leace",
    }
    for by_split in metrics["models"].values():
        assert set(by_split) == {"val", "test"}
    assert metrics["lift"] == pytest.approx(trial.user_attrs["lift"])  # the same controls
    assert set(metrics["lift_by_split"]) == {"val", "test"}
    assert metrics["alpha"] == pytest.approx(trial.user_attrs["alpha"])
    assert metrics["ablated_components"] == trial.user_attrs["ablated_components"]

    sae_doc = torch.load(exported / "sae.pt", weights_only=True)
    assert sae_doc["alpha"] == pytest.approx(trial.user_attrs["alpha"])
    (layer, stored), *_ = sae_doc["layers"].items()
    assert layer == trial.user_attrs["layer"] == "fc1" and len(sae_doc["layers"]) == 1
    sae = FaithfulSAE(**stored["sae_config"])
    sae.load_state_dict(stored["sae"], strict=True)
    assert {layer: stored["ablated_components"]} == trial.user_attrs["ablated_components"]


def test_exported_config_reruns_the_trial(
    tiny: str, exported: Path, tiny_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpo.service.study_file import load_study_file

    trial = best_trial(tiny)
    config = load_study_file(exported / "config.toml")  # the strict schema: no unknown keys
    assert config.params.lr == trial.params["lr"]
    assert config.params.faithful_weight == trial.params["faithful_weight"]
    assert config.search == {}
    doc = json.loads((exported / "config.json").read_text())
    prov = doc.pop("provenance")
    assert prov["trial"] == trial.number and prov["seed"] == trial.user_attrs["seed"]
    assert prov["data_sha256"] == trial.user_attrs["data_sha256"]
    assert prov["versions"]["torch"] == torch.__version__
    assert doc == tomllib.loads((exported / "config.toml").read_text())
    assert (exported / "config.toml").read_text().startswith("# Trial ")

    code = main(
        [
            "trial",
            "--config",
            str(exported / "config.toml"),
            "--data-dir",
            str(tiny_mnist_dir),
            "--json",
            "--no-test",
        ]
    )
    assert code == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["worst_group"] == trial.user_attrs["worst_group"]
    assert rerun["alpha"] == pytest.approx(trial.user_attrs["alpha"])


def test_model_card_says_what_was_removed_and_how_to_load_it(exported: Path) -> None:
    card = (exported / "README.md").read_text()
    metrics = json.loads((exported / "metrics.json").read_text())
    assert "the `fc1` weight" in card and "removed component(s) 0, 1." in card
    assert "conditioned during training to fire for the concepts red, green" in card
    assert f"α = {metrics['alpha']:.3g}" in card
    assert "from hpo.models.classifiers import ColorMnistMLP" in card
    assert 'model.load_state_dict(torch.load("model.pt", weights_only=True), strict=True)' in card
    worst = metrics["models"]["debiased"]["test"]["worst_group"]
    assert f"{100 * worst:.1f}%" in card


def test_the_storage_password_never_reaches_an_exported_file(exported: Path) -> None:
    for path in exported.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name
    assert "storage" not in tomllib.loads((exported / "config.toml").read_text())


def test_weights_that_do_not_rescore_are_refused_and_nothing_is_written(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trial = best_trial(tiny)
    artifacts = Path(tiny.removeprefix("sqlite:///")).parent / "artifacts" / "tiny"
    stored = artifacts / trial.user_attrs["trial_weights"]
    backup = tmp_path / "weights.bak"
    shutil.copy(stored, backup)
    payload = torch.load(stored, weights_only=True)
    (stored_sae,) = payload["saes"].values()
    stored_sae["sae"]["decoder"] = stored_sae["sae"]["decoder"] * 0.0  # other weights, same keys
    torch.save(payload, stored)
    out = tmp_path / "models" / "tiny"
    try:
        code = main(["export", "tiny", "--storage", tiny, "--out", str(out)])
    finally:
        shutil.copy(backup, stored)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "does not give its recorded validation numbers" in err
    assert not out.exists() and not list(tmp_path.glob("models/.*"))


def test_export_replaces_an_earlier_export_but_never_a_foreign_folder(
    tiny: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny"
    assert main(["export", "tiny", "--storage", tiny, "--out", str(out)]) == 0
    assert main(["export", "tiny", "--storage", tiny, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temp or old folder
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["export", "tiny", "--storage", tiny, "--out", str(foreign)]) == 2
    assert "exists and is not an earlier export" in capsys.readouterr().err
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_bad_study_name_lists_the_studies_that_exist(
    tiny: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "nosuch", "--storage", tiny]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no study named 'nosuch'" in err and "studies there: tiny" in err


@pytest.fixture(scope="module")
def pareto(tmp_path_factory: pytest.TempPathFactory, tiny_mnist_dir: Path) -> str:
    root = tmp_path_factory.mktemp("pareto")
    return run_tiny_study(
        root,
        tiny_mnist_dir,
        "tiny_pareto",
        n_trials=3,
        study={"objectives": ["worst_group", "faithfulness_error"]},
        sampler={"name": "random"},
    )


def test_multi_objective_export_lists_the_front_and_takes_a_trial_from_it(
    pareto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.load_study(study_name="tiny_pareto", storage=pareto)
    front = sorted(t.number for t in study.best_trials)

    assert main(["export", "tiny_pareto", "--storage", pareto]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Pareto front with --trial N" in err
    for number in front:
        assert f"trial {number} (worst_group=" in err

    off = [t.number for t in study.trials if t.number not in front]
    if off:
        assert main(["export", "tiny_pareto", "--storage", pareto, "--trial", str(off[0])]) == 2
        assert "not on the Pareto front" in capsys.readouterr().err

    out = tmp_path / "front"
    assert (
        main(
            [
                "export",
                "tiny_pareto",
                "--storage",
                pareto,
                "--trial",
                str(front[0]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    prov = json.loads((out / "config.json").read_text())["provenance"]
    assert prov["trial"] == front[0]
    assert set(prov["values"]) == {"worst_group", "faithfulness_error"}


def test_rescore_is_what_report_and_export_share(tiny: str) -> None:
    study = optuna.load_study(study_name="tiny", storage=tiny)
    r = rescore(study, tiny, study.best_trial)
    assert r.mismatches == []
    assert r.result.ranked_value("worst_group") == study.best_value
    assert set(r.result.models["debiased"]) == {"val", "test"}


def test_a_fitted_removal_in_two_layers_exports_what_was_fitted_without_refitting(
    tmp_path: Path, tiny_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.debias import ablation
    from hpo.models.classifiers import ColorMnistMLP

    params = {"ablate": "fitted", "layers": "fc1+fc2", "fit_steps": 30, "alpha": 1.0}
    url = run_tiny_study(tmp_path, tiny_mnist_dir, "fit", n_trials=1, params=params)
    trial = best_trial(url, "fit")
    recorded = trial.user_attrs["removed_fractions"]
    assert set(recorded) == {"fc1", "fc2"} == set(trial.user_attrs["ablated_components"])

    def no_refit(*_: Any, **__: Any) -> None:
        raise AssertionError("export refitted the removal instead of re-applying it")

    monkeypatch.setattr(ablation, "fit_removal", no_refit)
    out = tmp_path / "model"
    assert main(["export", "fit", "--storage", url, "--out", str(out)]) == 0

    sae_doc = torch.load(out / "sae.pt", weights_only=True)
    for layer in ("fc1", "fc2"):
        stored = sae_doc["layers"][layer]
        assert stored["removed_fractions"] == recorded[layer]
        assert stored["ablated_components"] == trial.user_attrs["ablated_components"][layer]
    state = torch.load(out / "model.pt", weights_only=True)
    model = ColorMnistMLP()
    model.load_state_dict(state, strict=True)
    study = optuna.load_study(study_name="fit", storage=url)
    base = rescore(study, url, trial).ctx.model.state_dict()  # re-applied, not refitted
    changed = {k for k, v in base.items() if not torch.equal(v, state[k])}
    assert changed == {"fc1.weight", "fc2.weight"}
    card = (out / "README.md").read_text()
    assert "`fc1.weight`, `fc2.weight`" in card and "part of" in card
