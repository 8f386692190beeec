"""What the benchmark-format tasks share: a metadata CSV naming each sample's label,
spurious attribute and split, a model read from a local file, and a bundle built by
streaming the samples through it.

A task kind here (hpo.tasks.image_folder, hpo.tasks.text_csv) says how to read one
sample and how to build its model; hpo.tasks.metadata_table turns the table into probe /
val / test, capped by seed *before* any sample is read (so a large benchmark costs what
the cap keeps); this module keys the bundle by the bytes of every file it reads, and
streams the kept samples (hpo.tasks.streaming) into the bundle. Where the decomposed
layer is the model's last, trials score from the cached layer inputs alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hpo.data import metadata_csv
from hpo.data.cache import bundle_file, content_hash, load_tensors
from hpo.errors import UserError
from hpo.models.final_layer import attach_final_head, install_final_head
from hpo.models.linear_layers import linear_call_order
from hpo.models.model_inputs import take, to_device
from hpo.tasks import batches, bundle, collect
from hpo.tasks.base import TaskConfig
from hpo.tasks.classifier import ClassifierTask
from hpo.tasks.classifier_context import ClassifierContext
from hpo.tasks.metadata_table import MetadataTaskConfig, Rows
from hpo.tasks.reference_scores import references_optional
from hpo.tasks.streamed_code import STREAMED_BUNDLE_CODE
from hpo.tasks.user import UserTask

CODE = (metadata_csv, *STREAMED_BUNDLE_CODE)


def choose_layer(cfg: MetadataTaskConfig, model: nn.Module, example: Any) -> str:
    """The configured layer, or the model's last nn.Linear; a UserError naming
    task.layer and the model's nn.Linear layers for one that is not there."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if cfg.layer is None:
        called = linear_call_order(model, example)
        if not called:
            raise UserError("task.layer: the model calls no nn.Linear layer; name one")
        return called[-1]
    if not isinstance(dict(model.named_modules()).get(cfg.layer), nn.Linear):
        raise UserError(
            f"task.layer: {cfg.layer!r} is not an nn.Linear of the model; its nn.Linear "
            f"layers: {', '.join(linear[-8:]) or 'none'}"
        )
    return cfg.layer


@dataclass(frozen=True)
class LoadedModel:
    """A task's trained model (eval mode), the digest of its files, what `rebuild` needs
    beside its state dict to make it again on a worker, and the collate function that
    batches its inputs (None: torch's default)."""

    model: nn.Module
    digest: str
    rebuild: dict[str, Any]
    collate: Callable[[list[Any]], dict[str, Any]] | None = None


class MetadataTask(ClassifierTask):
    """A benchmark-format task: subclasses read samples and build models."""

    kind: ClassVar[str]
    config: ClassVar[type[TaskConfig]]

    def rows(self, cfg: Any) -> Rows:
        raise NotImplementedError

    def datasets(self, cfg: Any, rows: Rows) -> tuple[dict[str, Dataset[Any]], str]:
        """One dataset per split over the kept rows, and the digest of every file they
        read beside the table (checked to exist, before any is decoded)."""
        raise NotImplementedError

    def model(self, cfg: Any, n_classes: int) -> LoadedModel:
        raise NotImplementedError

    def rebuild(self, cfg: Any, meta: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def card(self, cfg: Any, meta: dict[str, Any]) -> dict[str, str]:
        raise NotImplementedError

    def build(
        self, cfg: Any, *, data_dir: Any, device: torch.device, progress: bool
    ) -> tuple[Path, dict[str, float]]:
        t0 = time.perf_counter()
        rows = self.rows(cfg)
        datasets, data_sha = self.datasets(cfg, rows)
        loaded = self.model(cfg, len(rows.label_names))
        model, weights_sha, rebuild = loaded.model, loaded.digest, loaded.rebuild
        splits: dict[str, batches.Stream] = {
            name: d
            if loaded.collate is None
            else DataLoader(d, batch_size=cfg.batch_size, collate_fn=loaded.collate)
            for name, d in datasets.items()
        }
        timings = {"data": time.perf_counter() - t0}
        key = _bundle_key(cfg, rows, data_sha, weights_sha)
        path = bundle_file(self.kind, key)
        if path.exists():
            return path, timings
        t0 = time.perf_counter()
        model = model.to(device).eval()
        task, final = _user_task(cfg, rows, model, splits, device)
        collected = collect.collect_splits(model, task, device, cfg.seed)
        timings["activations"] = time.perf_counter() - t0
        timings |= bundle.write_bundle(
            path,
            task,
            references=cfg.references,
            optional_references=references_optional(cfg),
            oracle=None,
            seed=cfg.seed,
            meta={
                "key": key,
                "data_sha256": f"{rows.table.sha256[:16]}-{data_sha[:16]}",
                "task": cfg.model_dump(mode="json"),
                "final_head": final,
                "rebuild": rebuild,
                "label_names": list(rows.label_names),
            },
            model_payload={"state": model.state_dict()},
            device=device,
            collected=collected,
        ) | {"activations": timings["activations"]}
        return path, timings

    def load(self, cfg: Any, path: Path, device: torch.device) -> ClassifierContext:
        t0 = time.perf_counter()
        stored = load_tensors(path, map_location=device)
        meta = stored["meta"]
        model = self.rebuild(cfg, meta["rebuild"])
        model.load_state_dict(stored["model"]["state"], strict=True)
        model = model.to(device).eval()
        if meta["final_head"]:
            install_final_head(model, meta["layer"])
        ctx = bundle.context_from_bundle(stored, model, path, self.card(cfg, meta))
        ctx.timings = {"load": time.perf_counter() - t0}
        return ctx


def _bundle_key(cfg: Any, rows: Rows, data_sha: str, weights_sha: str) -> str:
    """The bytes of every file the bundle reads (table, samples, weights), and the code."""
    return content_hash(
        {
            "task": cfg.model_dump(mode="json"),
            "references_optional": references_optional(cfg),
            "table": rows.table.sha256,
            "data": data_sha,
            "weights": weights_sha,
            "code": bundle.code_fingerprint(CODE),
        }
    )


def _user_task(
    cfg: Any,
    rows: Rows,
    model: nn.Module,
    splits: dict[str, batches.Stream],
    device: torch.device,
) -> tuple[UserTask, bool]:
    """The streamed splits as a UserTask on the chosen layer, and whether a final head
    was attached to score from it (hpo.models.final_layer)."""
    first = next(iter(batches.loader_of(splits["probe"], 2, "task")))
    example = to_device(take(first["inputs"], slice(0, 2)), device)
    layer = choose_layer(cfg, model, example)
    final = attach_final_head(model, layer, example)
    task = UserTask(
        model=model,
        layer=layer,
        probe=splits["probe"],
        val=splits["val"],
        test=splits["test"],
        group_names=rows.group_names,
        concept_names=rows.attribute_names,
        batch_size=cfg.batch_size,
        tokens_per_sample=getattr(cfg, "tokens_per_sample", None),
    )
    return task, final
