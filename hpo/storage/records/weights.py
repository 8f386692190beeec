"""The artifact a complete trial uploads (`TrialWeights`): each layer's Faithful-SAE, the
edit plan it made and each control's (re-applied as they were, never refitted) and the
debiased state dict; every older payload layout is read here."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.data.cache import load_tensors, save_tensors
from hpo.debias.edit.controlled import Replay
from hpo.debias.strategies.registry import get_strategy
from hpo.params import EditConfig
from hpo.plans import EditPlan, Removal
from hpo.results import TrialResult
from hpo.storage.attrs import (
    TRIAL_WEIGHTS_ATTR,
)


@dataclass(frozen=True)
class StoredSAE:
    """One layer's Faithful-SAE: its state dict (CPU) and its constructor arguments."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]


@dataclass(frozen=True)
class TrialWeights:
    """The artifact a complete trial uploads: what export hands over, exactly."""

    saes: dict[str, StoredSAE]  # decomposed layer -> its SAE, in call order
    plan: EditPlan | None = None  # None: chosen again (payloads stored before removals)
    debiased: dict[str, torch.Tensor] | None = None  # the edited model's state dict
    # each control's plan, re-applied as it was (empty: chosen again, older payloads)
    control_plans: dict[str, EditPlan] = field(default_factory=dict)

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
            plan=None if result.edit is None else result.edit.plan,
            debiased=None if debiased is None else {k: v.cpu() for k, v in debiased.items()},
            control_plans={name: e.plan for name, e in result.control_edits.items()},
        )

    def replay(self) -> Replay:
        """The stored plans, for re-applying them as they were."""
        return Replay(self.plan, dict(self.control_plans))

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "saes": {k: {"sae": s.state, "sae_config": s.config} for k, s in self.saes.items()}
        }
        if self.plan is not None:
            payload["plan"] = self.plan.to_json()
        if self.debiased is not None:
            payload["debiased"] = self.debiased
        if self.control_plans:
            payload["control_plans"] = {n: p.to_json() for n, p in self.control_plans.items()}
        return payload

    @classmethod
    def from_payload(
        cls, payload: Mapping[str, Any], default_layer: str, edit: EditConfig
    ) -> TrialWeights:
        """`default_layer`: the one SAE of payloads stored before `layers` existed; `edit`:
        the trial's edit config, which says how payloads stored before plans (removals
        only) were chosen."""
        saes = payload["saes"] if "saes" in payload else {default_layer: payload}
        plan = payload.get("plan")
        controls = payload.get("control_plans", {})
        return cls(
            saes={k: StoredSAE(d["sae"], d["sae_config"]) for k, d in saes.items()},
            plan=EditPlan.from_json(plan) if plan is not None else _legacy(payload, edit),
            debiased=payload.get("debiased"),
            control_plans={n: EditPlan.from_json(d) for n, d in controls.items()}
            or {n: _plan_of(r, edit) for n, r in payload.get("controls", {}).items()},
        )


def _legacy(payload: Mapping[str, Any], edit: EditConfig) -> EditPlan | None:
    """The plan of a payload stored before plans: its removal, chosen by the trial's
    strategy (None before removals were stored: chosen again)."""
    removal = payload.get("removal")
    return None if removal is None else _plan_of(removal, edit)


def _plan_of(removal: Mapping[str, Any], edit: EditConfig) -> EditPlan:
    return EditPlan(
        removal={k: Removal.from_json(d) for k, d in removal.items()},
        strategy=edit.ablate,
        labels=get_strategy(edit.ablate).labels,
        compensate_bias=edit.ablate_bias,
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


def download_weights(
    store: Any, artifact_id: str, default_layer: str, edit: EditConfig
) -> TrialWeights:
    from optuna.artifacts import download_artifact

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.pt"
        download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(path))
        return TrialWeights.from_payload(load_tensors(path), default_layer, edit)
