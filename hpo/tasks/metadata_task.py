"""What the benchmark-format tasks share: a metadata CSV naming each sample's label,
spurious attribute and split, a model read from a local file, and a bundle built by
streaming the samples through it.

A task kind here (hpo.tasks.image_folder, hpo.tasks.text_csv) says how to read one
sample and how to build its model; this module turns the table into probe / val / test
(groups = label × attribute), caps each split by seed *before* any sample is read (so
a large benchmark costs what the cap keeps), keys the bundle by the bytes of every file
it reads, and streams the kept samples (hpo.tasks.streaming) into the bundle. Where the
decomposed layer is the model's last, trials score from the cached layer inputs alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hpo.data import metadata_csv
from hpo.data.cache import bundle_file, content_hash, load_tensors
from hpo.data.metadata_csv import Table, encode, group_names, partition, read_table
from hpo.debias import references as references_module
from hpo.errors import UserError
from hpo.models.final_layer import attach_final_head, install_final_head
from hpo.models.linear_layers import linear_call_order
from hpo.models.model_inputs import take, to_device
from hpo.strict import Strict
from hpo.tasks import batches, bundle, row_sampling, streaming
from hpo.tasks.base import TaskConfig
from hpo.tasks.bundle import ClassifierContext, check_references
from hpo.tasks.classifier import ClassifierConfig, ClassifierTask
from hpo.tasks.user import SPLITS, UserTask

CODE = (metadata_csv, bundle, streaming, batches, row_sampling, *references_module.CODE)


class SplitValues(Strict):
    """Which value of the split column each split takes (Waterbirds and CelebA: 0 train,
    1 validation, 2 test). Probe and val may name the same value: `probe_fraction` of
    its rows then go to probe, the rest to val (DFR's use of the validation set)."""

    probe: str | int = "1"
    val: str | int = "1"
    test: str | int = "2"

    def as_text(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in SPLITS}


class MetadataTaskConfig(ClassifierConfig):
    """The `[task]` fields every benchmark-format kind has. Paths are relative to the
    study file's folder."""

    path_fields: ClassVar[tuple[str, ...]] = ("metadata",)

    metadata: str = Field(min_length=1)
    splits: SplitValues = SplitValues()
    probe_fraction: float = Field(0.5, gt=0, lt=1)
    label_names: tuple[str, ...] | None = None
    attribute_names: tuple[str, ...] | None = None
    # The decomposed layer (dotted name of an nn.Linear); None: the model's last one.
    layer: str | None = None
    # At most this many samples per split, drawn by seed before any is read (None: all).
    max_rows: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    references: tuple[str, ...] = ("last_layer", "leace")

    @field_validator("references")
    @classmethod
    def _known_references(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        check_references(names, can_train_oracle=False, kind="benchmark")
        return names


@dataclass(frozen=True)
class Rows:
    """The table as labelled samples: every row's ids, and which rows each split keeps."""

    table: Table
    y: np.ndarray
    concepts: np.ndarray
    groups: np.ndarray
    kept: dict[str, np.ndarray]
    label_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    group_names: tuple[str, ...]


def table_rows(cfg: MetadataTaskConfig, label: str, attribute: str, split: str) -> Rows:
    """Read the metadata table and turn it into splits, capped by seed."""
    table = read_table(Path(cfg.metadata).expanduser(), "task.metadata")
    labels = table.column(label, "task.columns.label")
    attributes = table.column(attribute, "task.columns.attribute")
    split_of = table.column(split, "task.columns.split")
    parts = partition(split_of, cfg.splits.as_text(), cfg.probe_fraction, cfg.seed, "task.splits")
    used = np.sort(np.concatenate(list(parts.values())))
    y_used, label_names = encode([labels[i] for i in used], cfg.label_names, "task.columns.label")
    c_used, attr_names = encode(
        [attributes[i] for i in used], cfg.attribute_names, "task.columns.attribute"
    )
    y = np.full(len(table.rows), -1, dtype=np.int64)
    c = np.full(len(table.rows), -1, dtype=np.int64)
    y[used], c[used] = y_used, c_used
    kept = {}
    for i, name in enumerate(SPLITS):
        rows = parts[name]
        if cfg.max_rows is not None and len(rows) > cfg.max_rows:
            keys = row_sampling.sample_keys(cfg.seed, torch.from_numpy(rows), 20 + i)
            rows = rows[row_sampling.smallest(keys, cfg.max_rows).numpy()]
        kept[name] = rows
    return Rows(
        table=table,
        y=y,
        concepts=c,
        groups=y * len(attr_names) + c,
        kept=kept,
        label_names=label_names,
        attribute_names=attr_names,
        group_names=group_names(label_names, attr_names),
    )


def file_digest(paths: Sequence[Path], digest: Any | None = None) -> str:
    """sha256 over the bytes of every file, in order (a bundle is keyed by what it read)."""
    digest = digest or hashlib.sha256()
    for path in paths:
        digest.update(str(path.name).encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


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
        key = content_hash(
            {
                "task": cfg.model_dump(mode="json"),
                "table": rows.table.sha256,
                "data": data_sha,
                "weights": weights_sha,
                "code": bundle.code_fingerprint(CODE),
            }
        )
        path = bundle_file(self.kind, key)
        if path.exists():
            return path, timings
        t0 = time.perf_counter()
        model = model.to(device).eval()
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
        collected = bundle.collect_splits(model, task, device, cfg.seed)
        timings["activations"] = time.perf_counter() - t0
        timings |= bundle.write_bundle(
            path,
            task,
            references=cfg.references,
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
