"""Remove the conditioned latents, plus more components by attribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from hpo.config import TrialParams
from hpo.debias import ablation
from hpo.debias.removal import Removal
from hpo.debias.strategies.attribution import Attribution, top
from hpo.debias.strategies.base import EditSource, Labels, within_budget
from hpo.debias.strategies.conditioned import Conditioned


class Both:
    name: ClassVar[str] = "both"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        conditioned = ablation.conditioned_components(
            source.n_concepts * source.params.concept_latents
        )
        scores = {layer: source.attribution(layer) for layer in source.saes}
        removal = {
            layer: Removal(
                sorted(
                    set(conditioned) | set(top(scores[layer], source.params.n_ablate, conditioned))
                )
            )
            for layer in scores
        }
        return within_budget(removal, scores, source.budget)

    def describe(self, params: TrialParams, concept_names: Sequence[str]) -> str:
        return (
            f"{Conditioned().describe(params, concept_names)}, plus "
            f"{Attribution().describe(params, concept_names).removeprefix('the ')}"
        )
