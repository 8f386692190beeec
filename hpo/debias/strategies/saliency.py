"""Change the components the group-balanced loss is most sensitive to, by fitted amounts.

One fit instead of `fitted`'s two: each component's saliency is the first-order change
of the group-balanced cross-entropy on probe when a little of it is removed,
|∂L/∂r_c| at r = 0; the `max_components` most salient (else `n_ablate`) over all edited
layers are kept and their fractions (and the bias moves `fit_bias` allows) fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from hpo.debias import ablation
from hpo.debias.strategies.base import EditSource, within_budget
from hpo.debias.strategies.fitted import BIAS_WORDS, bias_moves, fit_fractions
from hpo.params import EditConfig
from hpo.plans import Labels, Removal


class Saliency:
    name: ClassVar[str] = "saliency"
    labels: ClassVar[Labels] = "group"

    def select(self, source: EditSource) -> dict[str, Removal]:
        loss = source.require_group_loss(self.name)
        scores = saliencies(source, loss)
        every = {layer: Removal(list(range(len(s)))) for layer, s in scores.items()}
        kept = within_budget(every, scores, source.budget or source.config.n_ablate)
        which = {layer: r.components for layer, r in kept.items()}
        return fit_fractions(source, which, loss, bias_moves(source.config, list(source.saes)))

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        return (
            "the components the group-balanced loss on probe is most sensitive to (first "
            f"order), their fractions then fitted{BIAS_WORDS[config.fit_bias]}"
        )


def saliencies(source: EditSource, loss: ablation.EditLoss) -> dict[str, torch.Tensor]:
    """|∂L/∂r_c| at no change, per layer [C]: how much removing a little of each
    component moves the loss, to first order."""
    fractions, factors = {}, {}
    for layer, sae in source.saes.items():
        e, d = sae.factors()
        factors[layer] = (e.detach(), d.detach())
        fractions[layer] = torch.zeros(e.shape[0], device=e.device, requires_grad=True)
    with torch.enable_grad():
        removed = {
            layer: ablation.weighted_sum(e, d, fractions[layer])
            for layer, (e, d) in factors.items()
        }
        loss(removed, {}).backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
    return {
        layer: f.grad.abs() if f.grad is not None else torch.zeros_like(f)
        for layer, f in fractions.items()
    }
