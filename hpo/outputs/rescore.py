"""Rebuild a stored trial from its weights and score it on val and test.

Everything after a study starts from a trial's own "trial_weights" artifact, never from
retraining: the report and the export both call `rescore`. The test split is computed
here, after the study, and never reaches the sampler. `mismatches` lists every recorded
validation number the re-scoring does not reproduce.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.config import StudyFile, TrialParams
from hpo.data.cache import load_tensors
from hpo.errors import UserError
from hpo.results import TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.storage.artifacts import artifact_store
from hpo.storage.attrs import (
    ABLATED_COMPONENTS_ATTR,
    ALPHA_ATTR,
    REMOVED_FRACTIONS_ATTR,
    STUDY_FILE_ATTR,
    TRIAL_WEIGHTS_ATTR,
    VAL_GROUPS_ATTR,
)
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
    study_file: StudyFile
    params: TrialParams
    ctx: Any
    saes: dict[str, FaithfulSAE]  # decomposed layer -> its Faithful-SAE
    payload: dict[str, Any]  # the trial_weights artifact: saes, debiased
    result: TrialResult  # task.evaluate(..., with_test=True)
    mismatches: list[str]  # recorded val number vs re-scored, where they differ


def load_trial_weights(
    study: optuna.Study, study_file: StudyFile, url: str, trial: FrozenTrial
) -> dict[str, Any]:
    from optuna.artifacts import download_artifact

    artifact_id = trial.user_attrs.get(TRIAL_WEIGHTS_ATTR)
    if not artifact_id:
        raise UserError(
            f"trial {trial.number} of study {study.study_name!r} has no stored weights "
            f"(state {trial.state.name}); only complete trials of a study run with an "
            "artifact store have them"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.pt"
        try:
            download_artifact(
                artifact_store=artifact_store(url, study_file.storage),
                artifact_id=artifact_id,
                file_path=str(path),
            )
        except Exception as err:
            raise UserError(
                f"cannot fetch the weights of trial {trial.number} (artifact {artifact_id}) "
                f"from the study's artifact store: {err}"
            ) from None
        return load_tensors(path)


def compare_recorded(attrs: dict[str, Any], result: TrialResult) -> list[str]:
    """'name: recorded X, re-scored Y' for every validation number that differs."""
    now: dict[str, Any] = {**result.objectives, **result.errors}
    tols = {k: ACC_TOL for k in ("worst_group", "mean_group", "overall")}
    if result.edit is not None:
        now[ALPHA_ATTR] = result.edit.alpha
    out = []
    for key, value in now.items():
        tol = tols.get(key, ERR_TOL)
        if key in attrs and not math.isclose(attrs[key], value, **tol):
            out.append(f"{key}: recorded {attrs[key]:.6g}, re-scored {value:.6g}")
    components = None if result.edit is None else result.edit.components
    recorded = attrs.get(ABLATED_COMPONENTS_ATTR, components)
    if isinstance(recorded, list) and components is not None:  # stored before `layers`
        recorded = {result.edit.layer: recorded}
    if recorded != components:
        out.append(f"ablated_components: recorded {recorded}, re-scored {components}")
    fractions = None if result.edit is None else result.edit.fractions
    if attrs.get(REMOVED_FRACTIONS_ATTR, fractions) != fractions:
        out.append("removed_fractions: the recorded fractions differ from the re-scored ones")
    for model, groups in (attrs.get(VAL_GROUPS_ATTR) or {}).items():
        metric = result.metric(model, "val")
        for g, v in groups.items():
            w = None if metric is None else metric.groups.get(g)
            if (v is None) != (w is None) or (v is not None and not math.isclose(v, w, **ACC_TOL)):
                out.append(f"{model} val {g}: recorded {v}, re-scored {w}")
    return out


def rescore(study: optuna.Study, url: str, trial: FrozenTrial) -> Rescored:
    """Rebuild a trial's Faithful-SAE from its stored weights; score it on val and test."""
    from hpo.service.studies import worker_context
    from hpo.service.study_file import stored_study_file

    study_file = stored_study_file(study.user_attrs[STUDY_FILE_ATTR], study.study_name)
    payload = load_trial_weights(study, study_file, url, trial)
    ctx = worker_context(study, study_file, url)
    device = next(ctx.model.parameters()).device
    if "saes" not in payload:  # stored before `layers`: one SAE, of the task's layer
        payload = {**payload, "saes": {ctx.layer: payload}}
    saes = {layer: load_sae(stored, device) for layer, stored in payload["saes"].items()}
    from hpo.service.search_space import trial_params

    params = trial_params(study_file, trial)
    removal = None
    if "removal" in payload:  # what the trial removed, re-applied as it was (never refitted)
        from hpo.tasks.classifier import Removal

        removal = {k: Removal.from_json(d) for k, d in payload["removal"].items()}
    task = get_task(study_file.task.kind)
    result = task.evaluate(ctx, saes, params, with_test=True, removal=removal)
    mismatches = compare_recorded(trial.user_attrs, result)
    return Rescored(study, trial, study_file, params, ctx, saes, payload, result, mismatches)


def load_sae(stored: dict[str, Any], device: Any) -> FaithfulSAE:
    """A Faithful-SAE from {"sae": state dict, "sae_config": constructor arguments}."""
    sae = FaithfulSAE(**stored["sae_config"]).to(device)
    sae.load_state_dict(stored["sae"], strict=True)
    return sae.eval()
