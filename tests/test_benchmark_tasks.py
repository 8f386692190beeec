"""The benchmark-format tasks on data the tests generate: an image folder with a
Waterbirds-shaped metadata CSV and a torchvision ResNet (random weights), and a CSV of
texts with a one-layer BERT saved by save_pretrained. Nothing downloads.

The image tests need torchvision (marked `vision`: CI runs them in their own venv, with
the torch that torchvision was built for); the text tests need transformers.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
import tomli_w
import torch
from helpers import (
    hpo,
    image_task,
    random_torchvision_weights,
    tiny_text_model,
    write_image_folder,
    write_text_csv,
)
from optuna.trial import TrialState

from hpo.service.study_file import load_study_file
from hpo.service.trial import prepare_task, run_trial

TINY_PARAMS = {"n_components": 16, "top_k": 4, "steps": 60, "eval_every": 30, "batch_size": 64}


def study_doc(name: str, task: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "study": {"name": name, "objectives": ["worst_group"], "n_trials": 4},
        "sampler": {"name": "tpe", "seed": 0, "options": {"n_startup_trials": 2}},
        "pruner": {"name": "none"},
        "task": task,
        "params": TINY_PARAMS,
        "search": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        **over,
    }


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# ---- image folder ----------------------------------------------------------------------


@pytest.fixture
def image_study(tmp_path: Path) -> Path:
    """A study file beside its data, naming every path relative to itself."""
    pytest.importorskip("torchvision", reason="the image_folder task needs torchvision")
    folder = tmp_path / "bench"
    write_image_folder(folder / "waterbirds", per_group=6)
    random_torchvision_weights(folder / "resnet18.pt")
    task = image_task(Path("waterbirds"), "resnet18.pt", metadata="waterbirds/metadata.csv")
    doc = study_doc("images", task, storage={"url": f"sqlite:///{tmp_path / 'images.db'}"})
    (folder / "images.toml").write_text(tomli_w.dumps(doc))
    return folder / "images.toml"


@pytest.mark.vision
@pytest.mark.slow
def test_image_folder_trial_two_worker_study_and_export(image_study: Path, tmp_path: Path) -> None:
    """Must show (issue 24): a trial, a 2-worker study and an export, through the CLI, run
    from another folder than the study file's."""
    env = env_for(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = hpo("trial", str(image_study), "--json", env=env, cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    groups = result["models"]["original"]["test"]["groups"]
    assert set(groups) == {"0/0", "0/1", "1/0", "1/1"}  # label/attribute from the CSV
    assert {"original", "debiased", "last_layer", "dfr", "leace"} <= set(result["models"])

    out = hpo("launch", str(image_study), "--workers", "2", env=env, cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert "trial 0 " in out.stderr or "trial 1 " in out.stderr  # a line per trial, no bar
    url = f"sqlite:///{tmp_path / 'images.db'}"
    study = optuna.load_study(study_name="images", storage=url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4

    export = tmp_path / "export"
    out = hpo("export", "images", "--storage", url, "--out", str(export), env=env, cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    import torchvision

    model = torchvision.models.resnet18(num_classes=2)
    model.load_state_dict(torch.load(export / "model.pt", weights_only=True), strict=True)
    config = tomllib.loads((export / "config.toml").read_text())
    assert Path(config["task"]["weights"]).is_absolute()  # reruns from any folder
    assert "torchvision.models.resnet18" in (export / "README.md").read_text()


@pytest.mark.vision
def test_image_folder_caps_rows_by_seed_before_reading(image_study: Path) -> None:
    study = load_study_file(image_study, ["task.max_rows=5"])
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert ctx.layer == "fc"  # the ResNet's last linear layer, by default
    assert all(len(s.y) == 5 for s in ctx.splits.values())
    assert all(s.x is None for s in ctx.splits.values()), "scored from the layer: no images"
    assert ctx.splits["probe"].z.shape == (5, 512)
    result, _ = run_trial(study, ctx, study.params, with_test=True)
    assert 0 <= result.value("worst_group") <= 1


# ---- text CSV --------------------------------------------------------------------------


@pytest.fixture
def text_study(tmp_path: Path) -> Path:
    pytest.importorskip("transformers", reason="the text_csv task needs transformers")
    folder = tmp_path / "bench"
    folder.mkdir()
    write_text_csv(folder / "texts.csv")
    tiny_text_model(folder / "tiny-bert")
    task = {
        "kind": "text_csv",
        "metadata": "texts.csv",
        "model": "tiny-bert",
        "splits": {"probe": "val", "val": "val", "test": "test"},
        "max_length": 12,
        "batch_size": 16,
    }
    (folder / "texts.toml").write_text(tomli_w.dumps(study_doc("texts", task)))
    return folder / "texts.toml"


def test_text_csv_trial_scores_from_the_classifier_layer(text_study: Path) -> None:
    study = load_study_file(text_study)
    assert Path(study.task.model).is_absolute()
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert ctx.layer == "classifier"  # BERT's last linear layer
    assert ctx.splits["probe"].z.shape == (20, 16) and ctx.splits["test"].z.shape == (40, 16)
    result, _ = run_trial(study, ctx, study.params, with_test=True)
    assert set(result.models["original"]["test"].groups) == {"0/0", "0/1", "1/0", "1/1"}
    assert {"last_layer", "dfr", "leace", "debiased"} <= set(result.models)
    card = ctx.card
    assert "AutoModelForSequenceClassification" in card["class"]


def test_dfr_is_the_same_whichever_layer_a_text_task_decomposes(text_study: Path) -> None:
    """DFR refits the final layer whichever layer is decomposed: decomposing BERT's
    pooler gives the DFR that decomposing the classifier gives (the same rows)."""
    scores = {}
    for layer in ("classifier", "bert.pooler.dense"):
        study = load_study_file(text_study, [f"task.layer={layer}", "params.steps=20"])
        ctx = prepare_task(study, data_dir=None, progress=False)
        assert ctx.layer == layer
        result, _ = run_trial(study, ctx, study.params, with_test=False)
        scores[layer] = result.models["dfr"]["val"].groups
    assert scores["bert.pooler.dense"] == pytest.approx(scores["classifier"], abs=1e-6)


def test_text_csv_encoder_layer_keeps_real_tokens(text_study: Path) -> None:
    layer = "bert.encoder.layer.0.intermediate.dense"
    study = load_study_file(text_study, [f"task.layer='{layer}'", "task.tokens_per_sample=3"])
    ctx = prepare_task(study, data_dir=None, progress=False)
    probe = ctx.splits["probe"]
    assert probe.z.shape == (20, 3, 16)
    assert isinstance(probe.x, dict) and probe.x["input_ids"].shape == (20, 12)
    result, _ = run_trial(study, ctx, study.params, with_test=False)
    assert 0 <= result.value("worst_group") <= 1
