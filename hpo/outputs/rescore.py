"""Rebuild a stored trial from its weights and score it on val and test.

Everything after a study starts from a trial's own "trial_weights" artifact, never from
retraining: the report and the export both call `rescore`. The test split is computed
here, after the study, and never reaches the sampler. `mismatches` lists every recorded
validation number the re-scoring does not reproduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.config import StudyFile, TrialParams
from hpo.errors import UserError
from hpo.results import CONTROL_PREFIX, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.storage.artifacts import artifact_store
from hpo.storage.records import (
    StoredSAE,
    TrialRecord,
    TrialWeights,
    download_weights,
    read_trial,
)
from hpo.tasks.base import TaskContext
from hpo.tasks.registry import get_task

# Accuracies are exact fractions of a split: a single changed prediction moves them by
# 1/N, far above this. Errors are float reductions whose last bits depend on the device.
ACC_TOL = {"rel_tol": 1e-9, "abs_tol": 1e-9}
ERR_TOL = {"rel_tol": 1e-3, "abs_tol": 1e-7}


@dataclass
class Rescored:
    """One stored trial, rebuilt from its weights and scored on val and test."""

    study: optuna.Study
    trial: FrozenTrial
    record: TrialRecord  # what the trial stored (validation numbers)
    study_file: StudyFile
    params: TrialParams
    ctx: TaskContext
    saes: dict[str, FaithfulSAE]  # decomposed layer -> its Faithful-SAE
    weights: TrialWeights  # the trial_weights artifact: SAEs, removal, debiased
    result: TrialResult  # task.evaluate(..., with_test=True)
    mismatches: list[str]  # recorded val number vs re-scored, where they differ


def load_trial_weights(
    study: optuna.Study,
    study_file: StudyFile,
    url: str,
    record: TrialRecord,
    layer: str,
    params: TrialParams,
) -> TrialWeights:
    if not record.trial_weights:
        state = study.trials[record.number].state.name
        raise UserError(
            f"trial {record.number} of study {study.study_name!r} has no stored weights "
            f"(state {state}); only complete trials of a study run with an "
            "artifact store have them"
        )
    try:
        return download_weights(
            artifact_store(url, study_file.storage),
            record.trial_weights,
            layer,
            params.edit_config,
        )
    except Exception as err:
        raise UserError(
            f"cannot fetch the weights of trial {record.number} (artifact "
            f"{record.trial_weights}) from the study's artifact store: {err}"
        ) from None


def compare_recorded(record: TrialRecord, result: TrialResult) -> list[str]:
    """'name: recorded X, re-scored Y' for every validation number that differs."""
    # The controls are re-derived (their fits are not stored), so they and the lift over
    # them are reported, not checked: what export hands over is the debiased model.
    now = {k: v for k, v in result.values().items() if k != "lift"}
    tols = {k: ACC_TOL for k in ("worst_group", "mean_group", "overall")}
    out = []
    for key, value in now.items():
        tol = tols.get(key, ERR_TOL)
        was = record.value(key)
        if was is not None and not math.isclose(was, value, **tol):
            out.append(f"{key}: recorded {was:.6g}, re-scored {value:.6g}")
    recorded, edit = record.edit, result.edit
    if recorded is not None and edit is not None:
        if not math.isclose(recorded.alpha, edit.alpha, **ERR_TOL):
            out.append(f"alpha: recorded {recorded.alpha:.6g}, re-scored {edit.alpha:.6g}")
        if recorded.components and recorded.components != edit.components:
            out.append(
                f"ablated_components: recorded {recorded.components}, re-scored {edit.components}"
            )
        if recorded.fractions is not None and recorded.fractions != edit.fractions:
            out.append("removed_fractions: the recorded fractions differ from the re-scored ones")
    for model, groups in record.val_groups.items():
        if model.startswith(CONTROL_PREFIX):
            continue
        metric = result.metric(model, "val")
        for g, v in groups.items():
            w = None if metric is None else metric.groups.get(g)
            if (v is None) != (w is None) or (
                v is not None and w is not None and not math.isclose(v, w, **ACC_TOL)
            ):
                out.append(f"{model} val {g}: recorded {v}, re-scored {w}")
    return out


def rescore(study: optuna.Study, url: str, trial: FrozenTrial) -> Rescored:
    """Rebuild a trial's Faithful-SAE from its stored weights; score it on val and test."""
    from hpo.service.search_space import trial_params
    from hpo.service.studies import worker_context
    from hpo.service.study_file import study_file_of

    study_file = study_file_of(study)
    ctx = worker_context(study, study_file, url)
    record = read_trial(trial, default_layer=ctx.layer)
    params = trial_params(study_file, trial)
    weights = load_trial_weights(study, study_file, url, record, ctx.layer, params)
    saes = {layer: load_sae(stored, ctx.device) for layer, stored in weights.saes.items()}
    task = get_task(study_file.task.kind)
    # what the trial's edits were, re-applied as they were (never refitted)
    result = task.evaluate(ctx, saes, params, with_test=True, replay=weights.replay())
    mismatches = compare_recorded(record, result)
    return Rescored(
        study, trial, record, study_file, params, ctx, saes, weights, result, mismatches
    )


def load_sae(stored: StoredSAE, device: Any) -> FaithfulSAE:
    """A Faithful-SAE from its stored state dict and constructor arguments."""
    sae = FaithfulSAE(**stored.config).to(device)
    sae.load_state_dict(stored.state, strict=True)
    return sae.eval()
