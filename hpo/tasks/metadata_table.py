"""The table every benchmark-format task reads: the `[task]` fields they all have, and the
metadata CSV turned into labelled rows (groups = label × attribute), split into probe /
val / test and capped by seed *before* any sample is read, so a large benchmark costs
what the cap keeps. `file_digest` keys a bundle by the bytes of every file it reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator

from hpo.data.metadata_csv import Table, encode, group_names, partition, read_table
from hpo.strict import Strict
from hpo.tasks import row_sampling
from hpo.tasks.classifier import ClassifierConfig
from hpo.tasks.reference_scores import check_references
from hpo.tasks.user import SPLITS


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
    # DFR at its published strength: what a group-label edit is judged against
    references: tuple[str, ...] = ("last_layer", "dfr", "leace")

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
