"""A benchmark's metadata table: one row per sample, with its label, its spurious
attribute and its split, as Waterbirds' `metadata.csv`, CelebA's attribute list (joined
with its partition file), MultiNLI's and CivilComments' tables ship.

`read_table` reads the CSV (UTF-8, a header row); `encode` maps a column's values to
integer ids (numbers in numeric order, so CelebA's -1/1 become 0/1 and Waterbirds' 0/1
stay); `partition` turns the split column into probe / val / test row indices, dividing
a split that both probe and val name (a benchmark's validation set is usually the only
balanced one) by seed. Every mistake is one line naming the `task.` field.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.errors import UserError

MAX_VALUES = 100  # more distinct values than this in a label column: probably a score


@dataclass(frozen=True)
class Table:
    path: Path
    header: tuple[str, ...]
    rows: list[dict[str, str]]
    sha256: str

    def column(self, name: str, field: str) -> list[str]:
        """The column's values; a UserError naming `field` if the CSV has no such column."""
        if name not in self.header:
            raise UserError(
                f"{field}: column {name!r} is not in {self.path} (its columns: "
                f"{', '.join(self.header)})"
            )
        return [row[name] for row in self.rows]


def read_table(path: Path, field: str) -> Table:
    """The CSV at `path` (a UserError naming `field` if it is missing or unreadable)."""
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"{field}: {path} {why}; give the metadata CSV's path")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{field}: {path} is not a UTF-8 text file") from None
    except OSError as err:
        raise UserError(f"{field}: cannot read {path} ({err.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    header = tuple(reader.fieldnames or ())
    rows = list(reader)
    if not header or not rows:
        raise UserError(f"{field}: {path} has no rows (a header line, then one row per sample)")
    ragged = next((i for i, row in enumerate(rows) if None in row or None in row.values()), None)
    if ragged is not None:
        raise UserError(
            f"{field}: {path} row {ragged + 2} has a different number of fields than the header"
        )
    return Table(path, header, rows, hashlib.sha256(data).hexdigest())


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def encode(
    values: Sequence[str], names: Sequence[str] | None, field: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer ids for a column's values, and a name per id: distinct values in numeric
    order where all are numbers, else in text order; `names` (one per value) renames."""
    distinct = sorted(set(values))
    numbers = [_number(v) for v in distinct]
    if all(n is not None for n in numbers):
        distinct = [v for _, v in sorted(zip(numbers, distinct, strict=True))]
    if len(distinct) < 2:
        raise UserError(f"{field}: has one value only ({distinct[0]!r}); at least two needed")
    if len(distinct) > MAX_VALUES:
        raise UserError(
            f"{field}: has {len(distinct)} distinct values; a label or attribute takes a few "
            "(threshold a score first, e.g. toxicity >= 0.5)"
        )
    if names is not None and len(names) != len(distinct):
        raise UserError(
            f"{field}: has {len(distinct)} values ({', '.join(distinct)}) but "
            f"{len(names)} names are given; give one name per value, in that order"
        )
    index = {v: i for i, v in enumerate(distinct)}
    ids = np.array([index[v] for v in values], dtype=np.int64)
    return ids, tuple(names) if names is not None else tuple(distinct)


SPLITS = ("probe", "val", "test")


def partition(
    split_values: Sequence[str],
    chosen: Mapping[str, str],
    probe_fraction: float,
    seed: int,
    field: str,
) -> dict[str, np.ndarray]:
    """Row indices of probe, val and test: the rows whose split column holds the value
    `chosen` names for each; where probe and val name the same value, a seeded
    `probe_fraction` of its rows goes to probe and the rest to val."""
    values = np.array(split_values)
    present = sorted(set(split_values))
    out: dict[str, np.ndarray] = {}
    for name in SPLITS:
        rows = np.flatnonzero(values == chosen[name])
        if len(rows) == 0:
            raise UserError(
                f"{field}.{name}: no row has split value {chosen[name]!r} (values in the "
                f"column: {', '.join(present)})"
            )
        out[name] = rows
    if chosen["probe"] == chosen["val"]:
        rows = out["probe"]
        order = np.random.default_rng(seed).permutation(len(rows))
        cut = int(round(probe_fraction * len(rows)))
        if cut == 0 or cut == len(rows):
            raise UserError(
                f"{field}: probe and val share {len(rows)} rows and probe_fraction "
                f"{probe_fraction} leaves one of them empty"
            )
        out["probe"], out["val"] = np.sort(rows[order[:cut]]), np.sort(rows[order[cut:]])
    if chosen["test"] in (chosen["probe"], chosen["val"]):
        raise UserError(f"{field}.test: the test split must not share rows with probe or val")
    return out


def group_names(labels: Sequence[str], attributes: Sequence[str]) -> tuple[str, ...]:
    """One name per group id = label · n_attributes + attribute."""
    return tuple(f"{y}/{a}" for y in labels for a in attributes)
