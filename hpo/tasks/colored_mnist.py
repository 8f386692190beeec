"""The colored-MNIST debiasing task (the seed's benchmark).

Digits are tied to colours in `train` (with probability `bias`) and balanced everywhere
else. The task trains the base model on `train` and an oracle on the same images
recoloured without the tie, then hands both to the shared classifier machinery
(hpo.tasks.classifier) as a `UserTask`: colored MNIST is a user task that ships with the
package. Its models run from the decomposed layer (`head`), so trials score from cached
layer inputs and never rerun the convolutional trunk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from hpo.data import colored_mnist as data
from hpo.data.cache import bundle_file, content_hash, load_tensors, save_tensors
from hpo.data.colored_mnist import PALETTE
from hpo.data.mnist import load_mnist
from hpo.debias import references as references_module
from hpo.models import classifiers, training
from hpo.models.classifiers import BASE_MODELS
from hpo.models.linear_layers import linear_layers
from hpo.tasks import bundle, collect, reference_scores
from hpo.tasks.base import TaskConfig
from hpo.tasks.classifier import ClassifierConfig, ClassifierTask
from hpo.tasks.classifier_context import ClassifierContext
from hpo.tasks.reference_scores import check_references
from hpo.tasks.user import Split, UserTask


class ColoredMnistTask(ClassifierConfig):
    """Colored MNIST: digits tied to colours in `train`, balanced everywhere else."""

    path_fields: ClassVar[tuple[str, ...]] = ("colorized_root",)

    kind: Literal["colored_mnist"] = "colored_mnist"
    source: Literal["mnist", "colorized_folder"] = "mnist"
    colorized_root: str | None = None
    colorize: Literal["background", "foreground"] = "background"
    colors: tuple[str, ...] = ("red", "green")
    color_digits: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    bias: float = Field(0.95, ge=0.0, le=1.0)
    train_per_digit: int = Field(500, ge=1)
    probe_per_digit: int = Field(400, ge=2)
    val_per_digit: int = Field(300, ge=2)
    test_per_digit: int = Field(800, ge=2)
    base_model: Literal["cnn", "mlp"] = "cnn"
    layer: str = "fc1"  # any nn.Linear of the base model (fc0 exists in the MLP only)
    base_epochs: int = Field(15, ge=1)
    base_lr: float = Field(1e-3, gt=0)
    base_batch_size: int = Field(32, ge=1)
    references: tuple[str, ...] = ("oracle", "last_layer", "dfr", "retrain_head", "leace")

    @field_validator("colors")
    @classmethod
    def _known_colors(cls, colors: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in colors if c not in PALETTE]
        if unknown:
            raise ValueError(f"unknown colour {unknown[0]!r}; valid: {', '.join(PALETTE)}")
        if len(colors) < 2 or len(set(colors)) != len(colors):
            raise ValueError("needs at least two distinct colours")
        return colors

    @field_validator("references")
    @classmethod
    def _known_references(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        check_references(names, can_train_oracle=True, kind="colored_mnist")
        return names

    @model_validator(mode="after")
    def _digits_partition(self) -> ColoredMnistTask:
        if len(self.color_digits) != len(self.colors):
            raise ValueError(
                f"color_digits has {len(self.color_digits)} digit sets but colors has "
                f"{len(self.colors)} colours; give one digit set per colour"
            )
        flat = sorted(d for ds in self.color_digits for d in ds)
        if flat != list(range(10)):
            raise ValueError("color_digits must split the digits 0-9, each digit exactly once")
        if any(not ds for ds in self.color_digits):
            raise ValueError("color_digits: every colour needs at least one digit")
        for name in ("probe_per_digit", "val_per_digit", "test_per_digit"):
            if getattr(self, name) < len(self.colors):
                raise ValueError(
                    f"{name} = {getattr(self, name)} is below the {len(self.colors)} colours: "
                    f"each digit is shown in every colour there; valid: {name} >= "
                    f"{len(self.colors)}"
                )
        if self.source == "colorized_folder" and not self.colorized_root:
            raise ValueError("source = 'colorized_folder' needs colorized_root")
        linear = linear_layers(BASE_MODELS[self.base_model]())
        if self.layer not in linear:
            raise ValueError(
                f"layer {self.layer!r} is not an nn.Linear of the {self.base_model} base model; "
                f"valid: {', '.join(linear)}"
            )
        return self


# The modules whose code shapes the trained models, and those that shape a bundle: a
# change to any of them rebuilds it. The fields that do not touch training (which layer,
# which references) rebuild the bundle in seconds and reuse the models.
MODEL_CODE = (data, classifiers, training)
BUNDLE_CODE = (*MODEL_CODE, bundle, collect, reference_scores, *references_module.CODE)
NOT_TRAINING = {"layer", "references"}


def load_splits(
    task: ColoredMnistTask, data_dir: str | Path | None, progress: bool
) -> tuple[dict[str, data.ImageSplit], str]:
    if task.source == "colorized_folder":
        from hpo.data.colorized_folder import folder_splits

        return folder_splits(task)
    mnist = load_mnist(data_dir, progress=progress)
    splits = data.build_splits(
        task, mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels
    )
    return splits, mnist.sha256


def bundle_key(task: ColoredMnistTask, data_sha256: str) -> str:
    return content_hash(
        {
            "data": data_sha256,
            "task": task.model_dump(mode="json"),
            "code": bundle.code_fingerprint(BUNDLE_CODE),
        }
    )


def models_key(task: ColoredMnistTask, data_sha256: str) -> str:
    return content_hash(
        {
            "data": data_sha256,
            "task": task.model_dump(mode="json", exclude=NOT_TRAINING),
            "code": bundle.code_fingerprint(MODEL_CODE),
        }
    )


def trained_models(
    task: ColoredMnistTask,
    splits: dict[str, data.ImageSplit],
    data_sha256: str,
    device: torch.device,
    progress: bool,
) -> dict[str, classifiers.ColoredMnistClassifier]:
    """The base model and the oracle, from the model cache or trained (and cached)."""
    path = bundle_file("colored_mnist-models", models_key(task, data_sha256))
    if path.exists():
        states = load_tensors(path, map_location=device)
        models = {}
        for name, state in states.items():
            models[name] = BASE_MODELS[task.base_model]().to(device)
            models[name].load_state_dict(state)
            models[name].eval()
        return models
    models = train_models(task, splits, device, progress)
    save_tensors(path, {name: m.state_dict() for name, m in models.items()})
    return models


def train_models(
    task: ColoredMnistTask,
    splits: dict[str, data.ImageSplit],
    device: torch.device,
    progress: bool,
) -> dict[str, classifiers.ColoredMnistClassifier]:
    """The base model on biased `train`; the oracle on the same images, balanced colours."""
    trained = {}
    for name, split in (("base", "train"), ("oracle", data.ORACLE_SPLIT)):
        torch.manual_seed(task.seed)
        model = BASE_MODELS[task.base_model]().to(device)
        trained[name] = training.train_classifier(
            model,
            torch.from_numpy(splits[split].images).to(device),
            torch.from_numpy(splits[split].digits).to(device),
            epochs=task.base_epochs,
            lr=task.base_lr,
            batch_size=task.base_batch_size,
            seed=task.seed,
            desc=f"{name} model",
            progress=progress,
        )
    return trained


def as_user_task(
    task: ColoredMnistTask, splits: dict[str, data.ImageSplit], model: torch.nn.Module
) -> UserTask:
    groups = data.make_groups(task)

    def split(name: str) -> Split:
        s = splits[name]
        return Split(
            x=training.images_to_float(torch.from_numpy(s.images)),
            y=torch.from_numpy(s.digits),
            groups=torch.from_numpy(groups.ids(s.digits, s.colors)),
            concepts=torch.from_numpy(s.colors),
        )

    return UserTask(
        model=model,
        layer=task.layer,
        probe=split("probe"),
        val=split("val"),
        test=split("test"),
        group_names=groups.names,
        concept_names=task.colors,
    )


class ColoredMnist(ClassifierTask):
    kind: ClassVar[str] = "colored_mnist"
    config: ClassVar[type[TaskConfig]] = ColoredMnistTask

    def build(
        self,
        cfg: ColoredMnistTask,
        *,
        data_dir: str | Path | None,
        device: torch.device,
        progress: bool,
    ) -> tuple[Path, dict[str, float]]:
        t0 = time.perf_counter()
        splits, sha = load_splits(cfg, data_dir, progress)
        timings = {"data": time.perf_counter() - t0}
        key = bundle_key(cfg, sha)
        path = bundle_file(self.kind, key)
        if path.exists():
            return path, timings
        t0 = time.perf_counter()
        models = trained_models(cfg, splits, sha, device, progress)
        timings["base_model"] = time.perf_counter() - t0
        base = models["base"]
        timings |= bundle.write_bundle(
            path,
            as_user_task(cfg, splits, base),
            references=cfg.references,
            oracle=models["oracle"],
            seed=cfg.seed,
            meta={"key": key, "data_sha256": sha, "task": cfg.model_dump(mode="json")},
            model_payload={"state": base.state_dict()},
            device=device,
        )
        return path, timings

    def load(self, cfg: ColoredMnistTask, path: Path, device: torch.device) -> ClassifierContext:
        t0 = time.perf_counter()
        stored = load_tensors(path, map_location=device)
        model = BASE_MODELS[cfg.base_model]().to(device)
        model.load_state_dict(stored["model"]["state"])
        model.eval()
        cls = type(model)
        card = {
            "summary": (
                f"A `{cls.__name__}` ({cfg.base_model}) trained on colored MNIST where colour "
                f"predicts the digit set {100 * cfg.bias:.0f}% of the time"
            ),
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "load": f"from {cls.__module__} import {cls.__name__}\nmodel = {cls.__name__}()",
        }
        ctx = bundle.context_from_bundle(stored, model, path, card)
        ctx.timings = {"load": time.perf_counter() - t0}
        return ctx
