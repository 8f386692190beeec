"""`ablate = "concept_fitted"`: a fitted removal that uses the concept labels only."""

from __future__ import annotations

import torch

from hpo.debias.strategies.base import EditSource
from hpo.debias.strategies.concept_fitted import ConceptFitted, concept_loss
from hpo.params import TrialParams
from hpo.plans import Removal
from hpo.sae.model import FaithfulSAE


def planted() -> EditSource:
    """A layer whose weight is two components: one reads the concept's input direction,
    one reads an unrelated direction. Only the first covaries with the concept."""
    torch.manual_seed(0)
    n = 400
    concept = torch.arange(n) % 2
    x = torch.randn(n, 4)
    x[:, 0] = 3.0 * concept + 0.1 * x[:, 0]  # input direction 0 is (almost) the concept
    sae = FaithfulSAE(4, 3, n_components=2, top_k=1)
    with torch.no_grad():
        sae.encoder.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        sae.decoder.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    concepts = torch.nn.functional.one_hot(concept, 2).float()
    return EditSource(
        saes={"l": sae},
        config=TrialParams(n_components=2, top_k=1, fit_steps=300, fit_lr=0.1),
        probe_inputs={"l": x},
        probe_concepts={"l": concepts},
        weights={"l": sae.effective_weight().detach()},
    )


def test_it_removes_the_component_that_carries_the_concept_and_keeps_the_other() -> None:
    source = planted()
    removal = ConceptFitted().select(source)["l"]
    fractions = dict(zip(removal.components, removal.fractions or [], strict=True))
    assert fractions.get(0, 0.0) > 0.8  # the concept's component, almost all of it
    assert fractions.get(1, 0.0) < 0.1  # the unrelated one, left alone


def test_its_loss_falls_from_one_as_the_concept_is_removed() -> None:
    source = planted()
    loss = concept_loss(source, "l")
    sae = source.saes["l"]
    assert float(loss(torch.zeros(4, 3))) == 1.0  # nothing removed: all of the concept left
    assert float(loss(sae.components([0])[0].detach())) < 0.05  # gone, and little else
    assert float(loss(sae.components([1])[0].detach())) > 1.0  # the wrong one: worse


def test_it_needs_no_group_labels_and_honours_a_budget() -> None:
    source = planted()
    assert source.group_loss is None and ConceptFitted.labels == "concept"
    capped = EditSource(
        **{**source.__dict__, "config": source.config.model_copy(update={"max_components": 1})}
    )
    removal = ConceptFitted().select(capped)
    assert sum(len(r.components) for r in removal.values()) <= 1
    assert isinstance(removal["l"], Removal)
