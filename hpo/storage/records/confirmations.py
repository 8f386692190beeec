"""What `hpo confirm` stores in the study: each confirmed trial's `Confirmation` (mean ±
std over fresh seeds) and the `ConfirmedBest`."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from hpo.storage.attrs import (
    CONFIRMATION_ATTR,
    CONFIRMED_BEST_ATTR,
)


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, list(values))


@dataclass(frozen=True)
class ConfirmationRun:
    """One fresh-seed run: its validation values and errors, the test worst-group of
    every model (the references are the run's own), and the gap it closed on test."""

    seed: int
    val: dict[str, float]
    errors: dict[str, float]
    test_worst_group: dict[str, float]
    gap_closed: tuple[float, str] | None = None  # (fraction, towards which reference)


@dataclass(frozen=True)
class Confirmation:
    """A trial's configuration re-run with fresh seeds: mean ± std per objective on val;
    test for reporting only."""

    seeds: list[int]
    new_base_model: bool
    diverged: int
    val: dict[str, Spread]
    test_worst_group: Spread | None
    runs: list[ConfirmationRun] = field(default_factory=list)
    # debiased − best control, worst group (None: no controls, or stored before them)
    val_lift: Spread | None = None
    test_lift: Spread | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for run in out["runs"]:
            gap = run["gap_closed"]
            run["gap_closed"] = None if gap is None else {"fraction": gap[0], "towards": gap[1]}
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Confirmation:
        test = d.get("test_worst_group")
        lifts = {k: None if d.get(k) is None else Spread(**d[k]) for k in ("val_lift", "test_lift")}
        return cls(
            seeds=list(d["seeds"]),
            new_base_model=bool(d.get("new_base_model", False)),
            diverged=int(d.get("diverged", 0)),
            val={k: Spread(**v) for k, v in d["val"].items()},
            test_worst_group=None if test is None else Spread(**test),
            runs=[_run_from_json(r) for r in d.get("runs", [])],  # older: no runs
            **lifts,
        )


def _run_from_json(d: Mapping[str, Any]) -> ConfirmationRun:
    gap = d.get("gap_closed")
    return ConfirmationRun(
        seed=int(d["seed"]),
        val=dict(d.get("val", {})),
        errors=dict(d.get("errors", {})),
        test_worst_group=dict(d.get("test_worst_group", {})),
        gap_closed=None if gap is None else (gap["fraction"], gap["towards"]),
    )


@dataclass(frozen=True)
class ConfirmedBest:
    """The trial `hpo confirm` chose, by the mean of the first objective on val."""

    trial: int
    objective: str
    mean: float
    seeds: int
    top: int
    new_base_model: bool = False


def read_confirmations(study: optuna.Study) -> dict[int, Confirmation]:
    stored = study.user_attrs.get(CONFIRMATION_ATTR, {})
    return {int(k): Confirmation.from_json(v) for k, v in stored.items()}


def write_confirmation(study: optuna.Study, number: int, record: Confirmation) -> None:
    """A finished trial cannot change: confirmations live in the study, by trial number."""
    done = dict(study.user_attrs.get(CONFIRMATION_ATTR, {}))
    done[str(number)] = record.to_json()
    study.set_user_attr(CONFIRMATION_ATTR, done)


def read_confirmed_best(study: optuna.Study) -> ConfirmedBest | None:
    stored = study.user_attrs.get(CONFIRMED_BEST_ATTR)
    return None if stored is None else ConfirmedBest(**stored)


def write_confirmed_best(study: optuna.Study, best: ConfirmedBest) -> None:
    study.set_user_attr(CONFIRMED_BEST_ATTR, asdict(best))
