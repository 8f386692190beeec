"""Remove the latents trained to fire for the concepts (SCAR's conditioning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from hpo.debias import ablation
from hpo.debias.strategies.base import EditSource, concepts_text, within_budget
from hpo.params import EditConfig
from hpo.plans import Labels, Removal


class Conditioned:
    name: ClassVar[str] = "conditioned"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        chosen = ablation.conditioned_components(source.n_concepts * source.config.concept_latents)
        removal = {layer: Removal(list(chosen)) for layer in source.saes}
        if source.budget is None:
            return removal
        scores = {layer: source.attribution(layer) for layer in source.saes}
        return within_budget(removal, scores, source.budget)

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        return (
            f"conditioned during training to fire for the concepts {concepts_text(concept_names)}"
            f" ({config.concept_latents} latent(s) each; SCAR)"
        )
