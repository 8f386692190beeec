"""The artifact a complete trial uploads (`TrialWeights`): each layer's Faithful-SAE, the
removal it made (re-applied as it was, never refitted) and the debiased state dict."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.data.cache import load_tensors, save_tensors
from hpo.debias.removal import Removal, recorded_removal
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
    removal: dict[str, Removal] | None = None  # None: chosen again (older payloads)
    debiased: dict[str, torch.Tensor] | None = None  # the edited model's state dict
    # each control's removal, re-applied as it was (None: chosen again, older payloads)
    controls: dict[str, dict[str, Removal]] | None = None

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
            controls={name: recorded_removal(e) for name, e in result.control_edits.items()},
        )

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "saes": {k: {"sae": s.state, "sae_config": s.config} for k, s in self.saes.items()}
        }
        if self.removal is not None:
            payload["removal"] = {k: r.to_json() for k, r in self.removal.items()}
        if self.debiased is not None:
            payload["debiased"] = self.debiased
        if self.controls:
            payload["controls"] = {
                name: {k: r.to_json() for k, r in removal.items()}
                for name, removal in self.controls.items()
            }
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
            controls={
                name: {k: Removal.from_json(d) for k, d in removal.items()}
                for name, removal in payload.get("controls", {}).items()
            }
            or None,
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
