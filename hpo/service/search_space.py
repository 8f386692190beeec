"""From a study file's search space to one trial's parameters, through Optuna's suggest API."""

from __future__ import annotations

from typing import Any

import optuna

from hpo.config import StudyFile, TrialParams
from hpo.search_spec import Choice, FloatRange, IntRange


def suggest(trial: optuna.trial.BaseTrial, study: StudyFile) -> TrialParams:
    """Sample every searched field; the rest keep the study's fixed params. `trial`: a
    live `optuna.Trial`, or a `FixedTrial` replaying a stored trial's parameters."""
    values: dict[str, Any] = {}
    for name, spec in study.search.items():
        if isinstance(spec, FloatRange):
            values[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, IntRange):
            values[name] = trial.suggest_int(
                name, spec.low, spec.high, step=spec.step, log=spec.log
            )
        elif isinstance(spec, Choice):
            values[name] = trial.suggest_categorical(name, list(spec.choices))
        else:
            values[name] = spec.value
    merged = {**study.params.model_dump(), **values}
    # A sampled top_k above a sampled n_components means "keep them all".
    merged["top_k"] = min(merged["top_k"], merged["n_components"])
    return TrialParams(**merged)


def trial_params(study: StudyFile, trial: optuna.trial.FrozenTrial) -> TrialParams:
    """A stored trial's full parameters, derived exactly as the objective derived them."""
    return suggest(optuna.trial.FixedTrial(trial.params, trial.number), study)
