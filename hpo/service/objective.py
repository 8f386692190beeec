"""The Optuna objective: sample a trial's parameters, train, report, score on `val`.

Intermediate scores (every `eval_every` SAE steps, from cached layer inputs) go to the
pruner. The test split is never computed here: the sampler only ever sees validation
numbers. Each finished trial records what a user needs to judge it, and uploads the
weights it scored so that export can hand over exactly those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna

from hpo.config import StudyFile, TrialParams
from hpo.errors import DivergedError, NonFiniteObjective
from hpo.results import TrialResult
from hpo.service.search_space import suggest
from hpo.service.trial import loss_history, run_trial
from hpo.storage.attrs import DIVERGED_ATTR, PRUNED_AT_STEP_ATTR, SURPLUS_ATTR
from hpo.storage.records import TrialWeights, upload_weights, write_provenance, write_result
from hpo.tasks.base import Saes, TaskContext
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


def _check_finite(trial: optuna.Trial, values: dict[str, float]) -> None:
    """A non-finite objective is a divergence (Optuna would store the trial as FAIL
    unprompted, outside the budget: a task that scores NaN would be sampled for ever)."""
    if not all(math.isfinite(v) for v in values.values()):
        bad = NonFiniteObjective(values)
        trial.set_user_attr(DIVERGED_ATTR, str(bad))
        raise bad


def constrained_errors(
    study_file: StudyFile, result: TrialResult
) -> dict[str, tuple[float, float]]:
    """Each error the study limits, with its limit: {name: (error, limit)}. A trial with
    an error over its limit is infeasible (Optuna's constrained optimization)."""
    study = study_file.study
    limits = {
        "faithfulness_error": study.max_faithfulness_error,
        "prediction_change": study.max_prediction_change,
    }
    return {
        name: (error, limit)
        for name, limit in limits.items()
        if limit is not None and (error := result.errors.get(name)) is not None
    }


def over_limits(study_file: StudyFile, result: TrialResult) -> list[str]:
    """What makes this result infeasible in a study, one line per error over its limit."""
    return [
        f"{name} {error:.4g} is over study.max_{name} {limit:g}: in a study this trial "
        "is infeasible, ranked below every feasible one"
        for name, (error, limit) in constrained_errors(study_file, result).items()
        if error > limit
    ]


class Objective:
    def __init__(
        self,
        study_file: StudyFile,
        ctx: TaskContext,
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
        write_provenance(
            trial,
            seed=params.seed,
            data_sha256=self.ctx.data_sha256,
            base_model=self.ctx.bundle_key,
            device=str(self.ctx.device),
        )
        single = len(self.objectives) == 1
        # a pruner compares trials at the same step: the [params] edit without the
        # in-trial search is the same, cheaper measure for every trial
        at_eval = params.without_edit_search()

        def on_eval(step: int, saes: Saes) -> None:
            if not single:
                return  # Optuna prunes single-objective studies only.
            result = self.task.evaluate(self.ctx, saes, at_eval, with_test=False)
            value = result.ranked_value(self.objectives[0])
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
        # ties broken (TrialResult.ranked): with many groups the worst is often 0 for all
        values = tuple(float(result.ranked_value(name)) for name in self.objectives)
        _check_finite(trial, dict(zip(self.objectives, values, strict=True)))
        write_result(trial, result, loss_history(trained))
        self._constrain(trial, result)
        if self.artifact_store is not None:
            self._upload_weights(trial, {k: t.sae for k, t in trained.items()}, params, result)
        if self.on_complete is not None:
            self.on_complete(trial, values)
        return values[0] if single else values

    def _constrain(self, trial: optuna.Trial, result: TrialResult) -> None:
        """Faithful by constraint: positive (infeasible) when an error is over its limit."""
        for name, (error, limit) in constrained_errors(self.study_file, result).items():
            trial.set_constraint(name, error - limit)

    def _check_budget(self, trial: optuna.Trial) -> None:
        earlier = trial.study.get_trials(deepcopy=False)
        used = sum(1 for t in earlier if t.number <= trial.number and counts_toward_budget(t))
        if used > self.budget:
            trial.set_user_attr(SURPLUS_ATTR, f"budget of {self.budget} trials already taken")
            raise SurplusTrial(f"trial {trial.number}: budget of {self.budget} already taken")

    def _upload_weights(
        self, trial: optuna.Trial, saes: Saes, params: TrialParams, result: TrialResult
    ) -> None:
        """The weights the trial scored, the removal it made (re-applied as it was by
        rescore: a fit is not refitted) and the edited model's state dict."""
        edited = self.task.edited_state_dict(self.ctx, saes, params, result)
        upload_weights(trial, self.artifact_store, TrialWeights.of(saes, result, edited))
