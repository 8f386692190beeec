"""Remove a fraction of every component, fitted on probe by group-balanced cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from hpo.config import TrialParams
from hpo.debias import ablation
from hpo.debias.removal import Removal
from hpo.debias.strategies.base import EditSource, Labels


class Fitted:
    name: ClassVar[str] = "fitted"
    labels: ClassVar[Labels] = "group"

    def select(self, source: EditSource) -> dict[str, Removal]:
        loss = source.require_group_loss(self.name)
        components = {layer: sae.components().detach() for layer, sae in source.saes.items()}
        params = source.params
        with torch.enable_grad():
            fitted = ablation.fit_removal(
                components, loss, steps=params.fit_steps, lr=params.fit_lr, l1=params.removal_l1
            )
        return {layer: Removal.from_fractions(f) for layer, f in fitted.items()}

    def describe(self, params: TrialParams, concept_names: Sequence[str]) -> str:
        return (
            "a fraction of each component, fitted on the balanced probe split by "
            "group-balanced cross-entropy (at α = 1 it only takes parts of the weight away)"
        )
