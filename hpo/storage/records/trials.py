"""A trial's user attrs: `write_result` stores a finished trial's `TrialResult`
(validation numbers only); `read_trial` reads any stored trial back as a `TrialRecord`,
migrating older layouts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.debias.strategies.registry import STRATEGIES
from hpo.plans import LABELS, EditPlan, Removal
from hpo.results import Edit, TrialResult
from hpo.storage.attrs import (
    ABLATED_COMPONENTS_ATTR,
    ALPHA_ATTR,
    ALPHA_CURVE_ATTR,
    BASE_MODEL_ATTR,
    BIAS_SHIFT_ATTR,
    COMPENSATE_BIAS_ATTR,
    CONFIRMATION_ATTR,
    DATA_SHA256_ATTR,
    DEVICE_ATTR,
    DIVERGED_ATTR,
    EDIT_SEARCH_ATTR,
    EDIT_SETTINGS_ATTR,
    INTERRUPTED_ATTR,
    LABELS_ATTR,
    LAYER_ATTR,
    LOSS_HISTORY_ATTR,
    PRUNED_AT_STEP_ATTR,
    REMOVED_FRACTIONS_ATTR,
    SEED_ATTR,
    SELECTION_ATTR,
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
        LABELS_ATTR,
        REMOVED_FRACTIONS_ATTR,
        COMPENSATE_BIAS_ATTR,
        BIAS_SHIFT_ATTR,
        EDIT_SETTINGS_ATTR,
        EDIT_SEARCH_ATTR,
        ALPHA_CURVE_ATTR,
        VAL_GROUPS_ATTR,
        TIMINGS_ATTR,
        VERSIONS_ATTR,
        DEVICE_ATTR,
        LOSS_HISTORY_ATTR,
    }
)
LEGACY_SELECTION = "conditioned"  # trials stored before `ablate` had other strategies


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
    fractions = _mapping(attrs.get(REMOVED_FRACTIONS_ATTR))
    shifts = _mapping(attrs.get(BIAS_SHIFT_ATTR))
    removal = {
        k: Removal(
            [int(c) for c in v], _fractions(fractions.get(k), len(v)), _numbers(shifts.get(k))
        )
        for k, v in _mapping(components).items()
        if isinstance(v, list) and all(isinstance(c, int) for c in v)
    }
    # stored before `selection`: the trial's sampled strategy, else the only one
    strategy = str(attrs.get(SELECTION_ATTR, params.get("ablate", LEGACY_SELECTION)))
    labels = attrs.get(LABELS_ATTR)
    if labels not in LABELS:  # stored before regimes: the strategy's own
        labels = STRATEGIES.get(strategy).labels if strategy in STRATEGIES else "concept"
    plan = EditPlan(
        removal=removal,
        strategy=strategy,
        labels=labels,
        compensate_bias=attrs.get(COMPENSATE_BIAS_ATTR) is True,
        settings=_mapping(attrs.get(EDIT_SETTINGS_ATTR)),
    )
    search = attrs.get(EDIT_SEARCH_ATTR)
    return Edit(
        search=[c for c in search if isinstance(c, dict)] if isinstance(search, list) else [],
        plan=plan,
        alpha=_number(attrs[ALPHA_ATTR]),
        alpha_curve=_mapping(attrs.get(ALPHA_CURVE_ATTR)),
    )


def _fractions(value: Any, n: int) -> list[float] | None:
    """A layer's stored fractions, if they are n numbers (else: whole components)."""
    numbers = _numbers(value)
    return numbers if numbers is not None and len(numbers) == n else None


def _numbers(value: Any) -> list[float] | None:
    """A stored list of numbers, else None."""
    if isinstance(value, list) and all(
        isinstance(f, int | float) and not isinstance(f, bool) for f in value
    ):
        return [float(f) for f in value]
    return None


def edit_attrs(edit: Edit) -> dict[str, Any]:
    """The user attrs a trial's edit is stored under (read back by `_read_edit`)."""
    plan = edit.plan
    stored: dict[str, Any] = {
        LAYER_ATTR: edit.layer,
        ALPHA_ATTR: edit.alpha,
        ABLATED_COMPONENTS_ATTR: edit.components,
        SELECTION_ATTR: plan.strategy,
        ALPHA_CURVE_ATTR: edit.alpha_curve,
        LABELS_ATTR: plan.labels,
    }
    if (fractions := edit.fractions) is not None:
        stored[REMOVED_FRACTIONS_ATTR] = fractions
    if plan.compensate_bias:
        stored[COMPENSATE_BIAS_ATTR] = True
    if plan.bias_shift is not None:
        stored[BIAS_SHIFT_ATTR] = plan.bias_shift
    if plan.settings:
        stored[EDIT_SETTINGS_ATTR] = plan.settings
    if edit.search:
        stored[EDIT_SEARCH_ATTR] = edit.search
    return stored


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
    stored = {**result.values(), **({} if result.edit is None else edit_attrs(result.edit))}
    for key, value in stored.items():
        trial.set_user_attr(key, value)
    if result.models:
        trial.set_user_attr(
            VAL_GROUPS_ATTR,
            {name: result.models[name]["val"].groups for name in result.model_names()},
        )
    trial.set_user_attr(TIMINGS_ATTR, result.timings)
    if result.provenance is not None:  # the device: where the SAE's parameters were
        trial.set_user_attr(VERSIONS_ATTR, result.provenance.versions)
        trial.set_user_attr(DEVICE_ATTR, result.provenance.device)
    trial.set_user_attr(LOSS_HISTORY_ATTR, downsample(dict(history)))


def write_provenance(
    trial: optuna.Trial, *, seed: int, data_sha256: str, base_model: str, device: str
) -> None:
    """What every trial records before it trains: enough to reproduce it, and the
    device it runs on ("cuda:1", "cpu"), so a pruned or failed trial says where too."""
    trial.set_user_attr(DEVICE_ATTR, device)
    trial.set_user_attr(SEED_ATTR, seed)
    trial.set_user_attr(DATA_SHA256_ATTR, data_sha256)
    trial.set_user_attr(BASE_MODEL_ATTR, base_model)


def downsample(history: dict[str, list[float]], points: int = 60) -> dict[str, list[float]]:
    n = len(history.get("step", []))
    if n <= points:
        return history
    idx = [round(i * (n - 1) / (points - 1)) for i in range(points)]
    return {k: [v[i] for i in idx] for k, v in history.items()}
