"""What a trial stores, written and read as typed objects: the one door to stored results.

A study outlives the code that wrote it, so every reader (status, notes, charts, the
report, export, confirm) goes through here and never parses user attrs itself:

- `write_result` stores a finished trial's `TrialResult` as user attrs (validation
  numbers only); `read_trial` gives them back as a `TrialRecord`.
- `TrialWeights` is the artifact a complete trial uploads: each layer's Faithful-SAE, the
  removal it made (re-applied as it was, never refitted) and the debiased state dict.
- `Confirmation` and `ConfirmedBest` are what `hpo confirm` stores in the study.

Every migration of an older stored layout sits in this module, next to the reader that
needs it.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from hpo.data.cache import load_tensors, save_tensors
from hpo.debias.removal import Removal, recorded_removal
from hpo.results import Edit, TrialResult
from hpo.storage.attrs import (
    ABLATED_COMPONENTS_ATTR,
    ALPHA_ATTR,
    ALPHA_CURVE_ATTR,
    BASE_MODEL_ATTR,
    CONFIRMATION_ATTR,
    CONFIRMED_BEST_ATTR,
    DATA_SHA256_ATTR,
    DEVICE_ATTR,
    DIVERGED_ATTR,
    INTERRUPTED_ATTR,
    LAYER_ATTR,
    LOSS_HISTORY_ATTR,
    PRUNED_AT_STEP_ATTR,
    REMOVED_FRACTIONS_ATTR,
    SEED_ATTR,
    SELECTION_ATTR,
    STUDY_FILE_ATTR,
    SURPLUS_ATTR,
    TIMINGS_ATTR,
    TRIAL_WEIGHTS_ATTR,
    VAL_GROUPS_ATTR,
    VERSIONS_ATTR,
)

# Trial user attrs that are bookkeeping, not a result value; every other number a trial
# stored is one of its objectives or errors, under its own name.
BOOKKEEPING = frozenset(
    {
        SEED_ATTR,
        DATA_SHA256_ATTR,
        BASE_MODEL_ATTR,
        TRIAL_WEIGHTS_ATTR,
        PRUNED_AT_STEP_ATTR,
        DIVERGED_ATTR,
        SURPLUS_ATTR,
        INTERRUPTED_ATTR,
        CONFIRMATION_ATTR,
        LAYER_ATTR,
        ALPHA_ATTR,
        ABLATED_COMPONENTS_ATTR,
        SELECTION_ATTR,
        REMOVED_FRACTIONS_ATTR,
        ALPHA_CURVE_ATTR,
        VAL_GROUPS_ATTR,
        TIMINGS_ATTR,
        VERSIONS_ATTR,
        DEVICE_ATTR,
        LOSS_HISTORY_ATTR,
    }
)
LEGACY_SELECTION = "conditioned"  # trials stored before `ablate` had other strategies


# ---- a trial's user attrs --------------------------------------------------------------


@dataclass(frozen=True)
class TrialRecord:
    """One stored trial's results and bookkeeping (validation numbers only)."""

    number: int
    values: dict[str, float]  # every objective and error the trial stored, by name
    edit: Edit | None = None
    val_groups: dict[str, dict[str, float | None]] = field(default_factory=dict)
    seed: int | None = None
    data_sha256: str | None = None
    base_model: str | None = None
    trial_weights: str | None = None  # artifact id of the weights it scored
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] | None = None
    device: str | None = None
    loss_history: dict[str, list[float]] = field(default_factory=dict)
    pruned_at_step: int | None = None
    diverged: str | None = None
    surplus: str | None = None
    interrupted: bool = False

    def value(self, name: str) -> float | None:
        return self.values.get(name)


def read_trial(trial: FrozenTrial | optuna.Trial, default_layer: str | None = None) -> TrialRecord:
    """A stored (or running) trial as a `TrialRecord`. `default_layer` names the edited layer of
    trials stored before `layers` existed (they recorded a list of components)."""
    attrs = trial.user_attrs
    values = {
        k: float(v)
        for k, v in attrs.items()
        if k not in BOOKKEEPING and isinstance(v, int | float) and not isinstance(v, bool)
    }
    return TrialRecord(
        number=trial.number,
        values=values,
        edit=_read_edit(attrs, trial.params, default_layer),
        val_groups=_mapping(attrs.get(VAL_GROUPS_ATTR)),
        seed=attrs.get(SEED_ATTR),
        data_sha256=attrs.get(DATA_SHA256_ATTR),
        base_model=attrs.get(BASE_MODEL_ATTR),
        trial_weights=attrs.get(TRIAL_WEIGHTS_ATTR),
        timings=_mapping(attrs.get(TIMINGS_ATTR)),
        versions=attrs.get(VERSIONS_ATTR),
        device=attrs.get(DEVICE_ATTR),
        loss_history=_mapping(attrs.get(LOSS_HISTORY_ATTR)),
        pruned_at_step=attrs.get(PRUNED_AT_STEP_ATTR),
        diverged=attrs.get(DIVERGED_ATTR),
        surplus=attrs.get(SURPLUS_ATTR),
        interrupted=bool(attrs.get(INTERRUPTED_ATTR, False)),
    )


def _read_edit(
    attrs: Mapping[str, Any], params: Mapping[str, Any], default_layer: str | None
) -> Edit | None:
    """The edit a classifier trial stored (None for a task that makes none). Readers
    draw what they can: a value of the wrong type reads as missing (NaN, empty), never
    as an error, so one damaged trial cannot break a report or the dashboard."""
    if ALPHA_ATTR not in attrs:
        return None
    layer = str(attrs.get(LAYER_ATTR, default_layer or "?"))
    components = attrs.get(ABLATED_COMPONENTS_ATTR, {})
    if isinstance(components, list):  # stored before `layers`: one layer's list
        components = {layer: components}
    return Edit(
        layer=layer,
        components={
            k: [int(c) for c in v]
            for k, v in _mapping(components).items()
            if isinstance(v, list) and all(isinstance(c, int) for c in v)
        },
        alpha=_number(attrs[ALPHA_ATTR]),
        # stored before `selection`: the trial's sampled strategy, else the only one
        selection=str(attrs.get(SELECTION_ATTR, params.get("ablate", LEGACY_SELECTION))),
        fractions=attrs.get(REMOVED_FRACTIONS_ATTR),
        alpha_curve=_mapping(attrs.get(ALPHA_CURVE_ATTR)),
    )


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


def write_result(
    trial: optuna.Trial, result: TrialResult, history: Mapping[str, list[float]]
) -> None:
    """Store what a person reads to judge a finished trial (validation numbers only)."""
    for key, value in {**result.objectives, **result.errors}.items():
        trial.set_user_attr(key, value)
    if result.edit is not None:
        trial.set_user_attr(LAYER_ATTR, result.edit.layer)
        trial.set_user_attr(ALPHA_ATTR, result.edit.alpha)
        trial.set_user_attr(ABLATED_COMPONENTS_ATTR, result.edit.components)
        trial.set_user_attr(SELECTION_ATTR, result.edit.selection)
        if result.edit.fractions is not None:
            trial.set_user_attr(REMOVED_FRACTIONS_ATTR, result.edit.fractions)
        trial.set_user_attr(ALPHA_CURVE_ATTR, result.edit.alpha_curve)
    if result.models:
        trial.set_user_attr(
            VAL_GROUPS_ATTR,
            {name: result.models[name]["val"].groups for name in result.model_names()},
        )
    trial.set_user_attr(TIMINGS_ATTR, result.timings)
    for key in (VERSIONS_ATTR, DEVICE_ATTR):  # stored under the provenance's own names
        if key in result.provenance:
            trial.set_user_attr(key, result.provenance[key])
    trial.set_user_attr(LOSS_HISTORY_ATTR, downsample(dict(history)))


def write_provenance(trial: optuna.Trial, *, seed: int, data_sha256: str, base_model: str) -> None:
    """What every trial records before it trains: enough to reproduce it."""
    trial.set_user_attr(SEED_ATTR, seed)
    trial.set_user_attr(DATA_SHA256_ATTR, data_sha256)
    trial.set_user_attr(BASE_MODEL_ATTR, base_model)


def downsample(history: dict[str, list[float]], points: int = 60) -> dict[str, list[float]]:
    n = len(history.get("step", []))
    if n <= points:
        return history
    idx = [round(i * (n - 1) / (points - 1)) for i in range(points)]
    return {k: [v[i] for i in idx] for k, v in history.items()}


# ---- the weights a trial scored ---------------------------------------------------------


@dataclass(frozen=True)
class StoredSAE:
    """One layer's Faithful-SAE: its state dict (CPU) and its constructor arguments."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]


@dataclass(frozen=True)
class TrialWeights:
    """The artifact a complete trial uploads: what export hands over, exactly."""

    saes: dict[str, StoredSAE]  # decomposed layer -> its SAE, in call order
    removal: dict[str, Removal] | None = None  # None: chosen again (older payloads)
    debiased: dict[str, torch.Tensor] | None = None  # the edited model's state dict

    @classmethod
    def of(
        cls,
        saes: Mapping[str, torch.nn.Module],
        result: TrialResult,
        debiased: Mapping[str, torch.Tensor] | None,
    ) -> TrialWeights:
        return cls(
            saes={
                layer: StoredSAE(
                    {k: v.detach().cpu() for k, v in sae.state_dict().items()},
                    sae.config(),  # type: ignore[operator]
                )
                for layer, sae in saes.items()
            },
            removal=None if result.edit is None else recorded_removal(result.edit),
            debiased=None if debiased is None else {k: v.cpu() for k, v in debiased.items()},
        )

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "saes": {k: {"sae": s.state, "sae_config": s.config} for k, s in self.saes.items()}
        }
        if self.removal is not None:
            payload["removal"] = {k: r.to_json() for k, r in self.removal.items()}
        if self.debiased is not None:
            payload["debiased"] = self.debiased
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], default_layer: str) -> TrialWeights:
        """`default_layer`: the one SAE of payloads stored before `layers` existed."""
        saes = payload["saes"] if "saes" in payload else {default_layer: payload}
        removal = payload.get("removal")
        return cls(
            saes={k: StoredSAE(d["sae"], d["sae_config"]) for k, d in saes.items()},
            removal=None
            if removal is None
            else {k: Removal.from_json(d) for k, d in removal.items()},
            debiased=payload.get("debiased"),
        )


def upload_weights(trial: optuna.Trial, store: Any, weights: TrialWeights) -> None:
    """Upload to the study's artifact store; the trial records the artifact id."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}.pt"
        save_tensors(path, weights.to_payload())
        artifact_id = upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial
        )
    trial.set_user_attr(TRIAL_WEIGHTS_ATTR, artifact_id)


def download_weights(store: Any, artifact_id: str, default_layer: str) -> TrialWeights:
    from optuna.artifacts import download_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.pt"
        download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(path))
        return TrialWeights.from_payload(load_tensors(path), default_layer)


# ---- the study ------------------------------------------------------------------------


def stored_objectives(study: optuna.Study) -> list[str]:
    """The objective names of the study file the study stored (none if it stored none):
    what labels its values, read without validating the whole file."""
    doc = study.user_attrs.get(STUDY_FILE_ATTR) or {}
    return list(doc.get("study", {}).get("objectives", []))


# ---- hpo confirm -----------------------------------------------------------------------


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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for run in out["runs"]:
            gap = run["gap_closed"]
            run["gap_closed"] = None if gap is None else {"fraction": gap[0], "towards": gap[1]}
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Confirmation:
        test = d.get("test_worst_group")
        return cls(
            seeds=list(d["seeds"]),
            new_base_model=bool(d.get("new_base_model", False)),
            diverged=int(d.get("diverged", 0)),
            val={k: Spread(**v) for k, v in d["val"].items()},
            test_worst_group=None if test is None else Spread(**test),
            runs=[_run_from_json(r) for r in d.get("runs", [])],  # older: no runs
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
