"""Remove a fraction of every component, fitted with concept labels only: the layer's
output stops covarying with the concept, and changes as little as it can otherwise.

The concept-label counterpart of `fitted` (which needs group labels): like LEACE it sees
the probe split's inputs and concept labels, never the class, so it belongs to the
concept regime. For each layer, with inputs X (rows), centred one-hot concepts Z and
removed part A (in × out), the loss is

    ‖Zᵀ X (W − A)‖² / ‖Zᵀ X W‖²  +  ‖R A‖² / ‖R W‖²  (+ removal_l1 · mean fraction),

with X centred and R = X less its least-squares fit on Z (the inputs the concept does not
explain): the concept's share of the output that remains, plus how much of the rest of
the output the removal takes with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from hpo.debias.strategies.base import EditSource, concepts_text
from hpo.debias.strategies.fitted import fit_within_budget
from hpo.params import EditConfig
from hpo.plans import Labels, Removal


class ConceptFitted:
    name: ClassVar[str] = "concept_fitted"
    labels: ClassVar[Labels] = "concept"

    def select(self, source: EditSource) -> dict[str, Removal]:
        """Fit every component's fraction; over budget, keep the largest removals and
        refit those alone (as `fitted` does)."""
        losses = {layer: concept_loss(source, layer) for layer in source.saes}

        def loss(removed: dict[str, torch.Tensor]) -> torch.Tensor:
            total = sum(losses[layer](part) for layer, part in removed.items())
            assert isinstance(total, torch.Tensor)  # a term per edited layer, never none
            return total

        # the concept loss does not see biases: no bias move (`fit_bias` is for group fits)
        return fit_within_budget(source, lambda removed, _: loss(removed), {})

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        return (
            "a fraction of each component, fitted with the concept labels only "
            f"({concepts_text(concept_names)}) so that the layer's output stops covarying "
            "with the concept and otherwise changes little"
        )


def concept_loss(source: EditSource, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """removed part A (in × out) -> the concept's remaining share of the layer's output,
    plus the share of the output A changes (see the module docstring)."""
    x = source.probe_inputs[layer]
    x = x - x.mean(dim=0)
    z = source.probe_concepts[layer]
    z = z - z.mean(dim=0)
    weight_t = source.weights[layer]
    zx = z.T @ x  # [n_concepts, in]: the inputs' covariance with the concept (× N)
    pinv: torch.Tensor = torch.linalg.pinv(z.T @ z)
    rest = x - z @ (pinv @ zx)  # the inputs the concept does not explain
    base_cov = (zx @ weight_t).square().sum().clamp(min=1e-12)
    base_rest = (rest @ weight_t).square().sum().clamp(min=1e-12)

    def loss(removed: torch.Tensor) -> torch.Tensor:
        remaining = (zx @ (weight_t - removed)).square().sum() / base_cov
        collateral = (rest @ removed).square().sum() / base_rest
        return remaining + collateral

    return loss
