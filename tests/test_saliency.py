"""The saliency strategy: the components the group loss is most sensitive to, refitted."""

from __future__ import annotations

import torch

from hpo.debias.strategies.base import EditSource
from hpo.debias.strategies.saliency import Saliency, saliencies
from hpo.params import TrialParams
from hpo.sae.model import FaithfulSAE


def source(budget: int) -> EditSource:
    """Component 2 carries what the loss wants gone; 0, 1 and 3 barely matter."""
    torch.manual_seed(0)
    sae = FaithfulSAE(3, 2, n_components=4, top_k=1)
    with torch.no_grad():
        sae.encoder.copy_(torch.randn(3, 4) * torch.tensor([0.1, 0.1, 1.0, 0.1]))
    e, d = sae.factors()
    wanted = (e[2] @ d[2]).detach()

    def loss(removed: dict[str, torch.Tensor], _: dict[str, torch.Tensor]) -> torch.Tensor:
        return (removed["l"] - wanted).square().sum()

    return EditSource(
        saes={"l": sae},
        config=TrialParams(n_components=4, top_k=1, max_components=budget, fit_steps=400),
        probe_inputs={"l": torch.randn(8, 3)},
        probe_concepts={"l": torch.eye(2)[torch.arange(8) % 2]},
        group_loss=loss,
        weights={"l": sae.effective_weight().detach()},
    )


def test_the_most_salient_component_is_kept_and_its_fraction_fitted() -> None:
    src = source(budget=1)
    scores = saliencies(src, src.require_group_loss("saliency"))["l"]
    assert int(scores.argmax()) == 2
    removal = Saliency().select(src)["l"]
    assert removal.components == [2]
    assert removal.fractions is not None and abs(removal.fractions[0] - 1.0) < 0.05


def test_it_keeps_at_most_the_budget() -> None:
    for budget in (1, 2, 3):
        removal = Saliency().select(source(budget))["l"]
        assert len(removal.components) <= budget and 2 in removal.components
