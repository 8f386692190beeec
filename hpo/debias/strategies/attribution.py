"""Remove the components whose contribution differs most between concepts on probe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from hpo.config import TrialParams
from hpo.debias import ablation
from hpo.debias.removal import Removal
from hpo.debias.strategies.base import EditSource, Labels


class Attribution:
    name: ClassVar[str] = "attribution"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        return {layer: Removal(by_attribution(source, layer, exclude=[])) for layer in source.saes}

    def describe(self, params: TrialParams, concept_names: Sequence[str]) -> str:
        return (
            f"the {params.n_ablate} whose contribution differs most between concepts on "
            "probe (attribution)"
        )


def by_attribution(source: EditSource, layer: str, exclude: list[int]) -> list[int]:
    """`params.n_ablate` components of `layer` by attribution, none of `exclude`."""
    return ablation.attribution_components(
        source.saes[layer],
        source.probe_inputs[layer],
        source.probe_concepts,
        source.params.n_ablate,
        exclude=exclude,
    )
