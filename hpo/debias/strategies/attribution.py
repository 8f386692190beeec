"""Remove the components whose contribution differs most between concepts on probe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from hpo.debias.strategies.base import EditSource, within_budget
from hpo.params import EditConfig
from hpo.plans import Labels, Removal


class Attribution:
    name: ClassVar[str] = "attribution"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        scores = {layer: source.attribution(layer) for layer in source.saes}
        removal = {layer: Removal(top(scores[layer], source.config.n_ablate)) for layer in scores}
        return within_budget(removal, scores, source.budget)

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        return (
            f"the {config.n_ablate} whose contribution differs most between concepts on "
            "probe (attribution)"
        )


def top(scores: torch.Tensor, m: int, exclude: list[int] | None = None) -> list[int]:
    """The m components with the largest scores, none of `exclude`, in index order."""
    scores = scores.clone()
    if exclude:
        scores[exclude] = -1.0  # already chosen: pick m others
    return scores.topk(min(m, scores.numel())).indices.sort().values.tolist()
