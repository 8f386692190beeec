"""The Optuna objective: sample a trial's parameters, train, report, score on `val`.

Intermediate scores (every `eval_every` SAE steps, from cached layer inputs) go to the
pruner. The test split is never computed here: the sampler only ever sees validation
numbers. Each finished trial records what a user needs to judge it, and uploads the
weights it scored so that export can hand over exactly those.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hpo.config import StudyFile, TrialParams
from hpo.errors import DivergedError
from hpo.results import TrialResult
from hpo.service.search_space import suggest
from hpo.service.trial import loss_history, run_trial
from hpo.storage.attrs import (
    ABLATED_COMPONENTS_ATTR,
    ALPHA_ATTR,
    ALPHA_CURVE_ATTR,
    BASE_MODEL_ATTR,
    DATA_SHA256_ATTR,
    DEVICE_ATTR,
    DIVERGED_ATTR,
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
from hpo.tasks.base import Saes
from hpo.tasks.registry import get_task

# Trials that count against the study-wide budget (a FAIL counts only if it diverged:
# interrupted, surplus and heartbeat-failed trials are not results).
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class SurplusTrial(Exception):
    """Two workers started the last trial of the budget at once; this one steps aside."""


def counts_toward_budget(t: optuna.trial.FrozenTrial) -> bool:
    if t.state == optuna.trial.TrialState.FAIL:
        return DIVERGED_ATTR in t.user_attrs
    return True


def is_result(t: optuna.trial.FrozenTrial) -> bool:
    return t.state in FINISHED or (
        t.state == optuna.trial.TrialState.FAIL and DIVERGED_ATTR in t.user_attrs
    )


def downsample(history: dict[str, list[float]], points: int = 60) -> dict[str, list[float]]:
    n = len(history.get("step", []))
    if n <= points:
        return history
    idx = [round(i * (n - 1) / (points - 1)) for i in range(points)]
    return {k: [v[i] for i in idx] for k, v in history.items()}


class Objective:
    def __init__(
        self,
        study_file: StudyFile,
        ctx: Any,
        budget: int,
        artifact_store: Any | None = None,
        on_complete: Callable[[optuna.Trial, tuple[float, ...]], None] | None = None,
    ) -> None:
        self.study_file = study_file
        self.ctx = ctx
        self.budget = budget
        self.artifact_store = artifact_store
        self.on_complete = on_complete  # e.g. charts and notes for the dashboard
        self.task = get_task(study_file.task.kind)
        self.objectives = study_file.study.objectives

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self._check_budget(trial)
        params = suggest(trial, self.study_file)
        trial.set_user_attr(SEED_ATTR, params.seed)
        trial.set_user_attr(DATA_SHA256_ATTR, self.ctx.data_sha256)
        trial.set_user_attr(BASE_MODEL_ATTR, self.ctx.bundle_key)
        single = len(self.objectives) == 1

        def on_eval(step: int, saes: Saes) -> None:
            if not single:
                return  # Optuna prunes single-objective studies only.
            result = self.task.evaluate(self.ctx, saes, params, with_test=False)
            value = result.value(self.objectives[0])
            trial.report(value, step)
            if trial.should_prune():
                # A constraint is set once per trial: here for a pruned trial (its error
                # where it stopped), else at the end (the final error), never mid-way.
                self._constrain(trial, result)
                trial.set_user_attr(PRUNED_AT_STEP_ATTR, step)
                raise optuna.TrialPruned(
                    f"pruned at step {step} ({self.objectives[0]}={value:.4f})"
                )

        try:
            result, trained = run_trial(
                self.study_file, self.ctx, params, with_test=False, on_eval=on_eval
            )
        except DivergedError as err:
            trial.set_user_attr(DIVERGED_ATTR, str(err))
            raise
        record(trial, result, loss_history(trained))
        self._constrain(trial, result)
        if self.artifact_store is not None:
            self._upload_weights(trial, {k: t.sae for k, t in trained.items()}, params, result)
        values = tuple(float(result.value(name)) for name in self.objectives)
        if self.on_complete is not None:
            self.on_complete(trial, values)
        return values[0] if single else values

    def _constrain(self, trial: optuna.Trial, result: TrialResult) -> None:
        """Faithful by constraint: positive (infeasible) when the error is over the limit."""
        limit = self.study_file.study.max_faithfulness_error
        error = result.errors.get("faithfulness_error")
        if limit is not None and error is not None:
            trial.set_constraint("faithfulness_error", error - limit)

    def _check_budget(self, trial: optuna.Trial) -> None:
        earlier = trial.study.get_trials(deepcopy=False)
        used = sum(1 for t in earlier if t.number <= trial.number and counts_toward_budget(t))
        if used > self.budget:
            trial.set_user_attr(SURPLUS_ATTR, f"budget of {self.budget} trials already taken")
            raise SurplusTrial(f"trial {trial.number}: budget of {self.budget} already taken")

    def _upload_weights(
        self, trial: optuna.Trial, saes: Saes, params: TrialParams, result: TrialResult
    ) -> None:
        from optuna.artifacts import upload_artifact

        from hpo.data.cache import save_tensors

        payload: dict[str, Any] = {"saes": sae_payload(saes)}
        if result.edit is not None:  # re-applied as is by rescore: a fit is not refitted
            from hpo.tasks.classifier import recorded_removal

            payload["removal"] = {k: r.to_json() for k, r in recorded_removal(result.edit).items()}
        edited = self.task.edited_state_dict(self.ctx, saes, params, result)
        if edited is not None:
            payload["debiased"] = {k: v.cpu() for k, v in edited.items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}.pt"
            save_tensors(path, payload)
            artifact_id = upload_artifact(
                artifact_store=self.artifact_store, file_path=str(path), study_or_trial=trial
            )
        trial.set_user_attr(TRIAL_WEIGHTS_ATTR, artifact_id)


def sae_payload(saes: Saes) -> dict[str, dict[str, Any]]:
    """Layer -> {"sae": state dict on the CPU, "sae_config": constructor arguments}."""
    return {
        layer: {
            "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
            "sae_config": sae.config(),
        }
        for layer, sae in saes.items()
    }


def record(trial: optuna.Trial, result: TrialResult, history: dict[str, list[float]]) -> None:
    """User attrs a person reads to judge a trial (validation numbers only)."""
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
    trial.set_user_attr(LOSS_HISTORY_ATTR, downsample(history))
