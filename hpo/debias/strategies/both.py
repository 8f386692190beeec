"""Remove the conditioned latents, plus more components by attribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from hpo.config import TrialParams
from hpo.debias import ablation
from hpo.debias.removal import Removal
from hpo.debias.strategies.attribution import Attribution, by_attribution
from hpo.debias.strategies.base import EditSource, Labels
from hpo.debias.strategies.conditioned import Conditioned


class Both:
    name: ClassVar[str] = "both"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        conditioned = ablation.conditioned_components(
            source.n_concepts * source.params.concept_latents
        )
        return {
            layer: Removal(
                sorted(set(conditioned) | set(by_attribution(source, layer, conditioned)))
            )
            for layer in source.saes
        }

    def describe(self, params: TrialParams, concept_names: Sequence[str]) -> str:
        return (
            f"{Conditioned().describe(params, concept_names)}, plus "
            f"{Attribution().describe(params, concept_names).removeprefix('the ')}"
        )
