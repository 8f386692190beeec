"""Remove the conditioned latents, plus more components by attribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from hpo.debias import ablation
from hpo.debias.strategies.attribution import Attribution, top
from hpo.debias.strategies.base import EditSource, within_budget
from hpo.debias.strategies.conditioned import Conditioned
from hpo.params import EditConfig
from hpo.plans import Labels, Removal


class Both:
    name: ClassVar[str] = "both"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        conditioned = ablation.conditioned_components(
            source.n_concepts * source.config.concept_latents
        )
        scores = {layer: source.attribution(layer) for layer in source.saes}
        removal = {
            layer: Removal(
                sorted(
                    set(conditioned) | set(top(scores[layer], source.config.n_ablate, conditioned))
                )
            )
            for layer in scores
        }
        return within_budget(removal, scores, source.budget)

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        return (
            f"{Conditioned().describe(config, concept_names)}, plus "
            f"{Attribution().describe(config, concept_names).removeprefix('the ')}"
        )
