"""What an edit strategy is, and what it may look at when it chooses.

A strategy turns a trained decomposition into a `Removal` per layer. It declares the
labels its choice uses on the probe split: `concept` (the spurious attribute only, as in
SCAR or LEACE) or `group` (attribute and class, as in DFR). `EditSource` hands it only
what that regime allows: a concept strategy gets no group-label loss. Validation group
labels choose α in every regime (hpo.tasks.classifier), as in DFR and its successors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from hpo.debias import ablation
from hpo.params import EditConfig
from hpo.plans import Labels, Removal
from hpo.sae.model import FaithfulSAE

# removed parts {layer: (in × out)} -> a loss on probe of the model with them taken away
RemovalLoss = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# ... and with the edited layers' biases moved ({layer: [out]}) too
EditLoss = ablation.EditLoss


@dataclass(frozen=True)
class EditSource:
    """What a strategy may use: the decomposition of each layer, the edit's config, the
    probe split's inputs of each layer and their concept labels (one-hot; a layer that
    sees sequences has a row per token), each layer's weight, and — for a strategy that
    declares group labels — a group-balanced loss on probe."""

    saes: Mapping[str, FaithfulSAE]
    config: EditConfig
    probe_inputs: Mapping[str, torch.Tensor]  # layer -> its inputs as rows [N, in]
    probe_concepts: Mapping[str, torch.Tensor]  # layer -> its rows' concepts, one-hot
    group_loss: EditLoss | None = None
    # layer -> its weight W in (in × out) layout, the one the edit changes (a decomposition
    # sums to it only as far as it is faithful; a control's may not at all)
    weights: Mapping[str, torch.Tensor] = field(default_factory=dict)
    # fits shared by the plans of one in-trial search (hpo.debias.edit.search): a fit
    # that differs only in its budget reuses the first, unbudgeted one
    memo: dict[str, Any] | None = None

    @property
    def n_concepts(self) -> int:
        return int(next(iter(self.probe_concepts.values())).shape[1])

    @property
    def budget(self) -> int | None:
        """At most this many components removed, over all layers (`max_components`)."""
        return self.config.max_components

    def attribution(self, layer: str) -> torch.Tensor:
        """Each component's `attribution_scores` on probe: how differently it contributes
        with and without a concept, [C]."""
        return ablation.attribution_scores(
            self.saes[layer], self.probe_inputs[layer], self.probe_concepts[layer]
        )

    def require_group_loss(self, strategy: str) -> EditLoss:
        if self.group_loss is None:
            raise ValueError(f"edit strategy {strategy!r} needs group labels on probe")
        return self.group_loss


class EditStrategy(Protocol):
    """One way to choose what an edit removes (sklearn-shaped: configured by its EditConfig).

    `select` honours `source.budget` exactly: at most that many components, whole or in
    part, over all layers."""

    name: ClassVar[str]
    labels: ClassVar[Labels]

    def select(self, source: EditSource) -> dict[str, Removal]:
        """Per decomposed layer, which components go and how much of each."""
        ...

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        """How the components were chosen, in words for notes, model cards and reports."""
        ...


def within_budget(
    removal: Mapping[str, Removal], scores: Mapping[str, torch.Tensor], budget: int | None
) -> dict[str, Removal]:
    """At most `budget` components over all layers (None: no limit): those with the
    largest scores; ties go to the earlier layer, then the lower index, so the choice is
    deterministic. Every layer keeps its entry, perhaps with no component."""
    total = sum(len(r.components) for r in removal.values())
    if budget is None or total <= budget:
        return dict(removal)
    ranked = sorted(
        (
            (-float(scores[layer][c]), order, c, layer)
            for order, (layer, r) in enumerate(removal.items())
            for c in r.components
        )
    )
    kept = {(layer, c) for _, _, c, layer in ranked[:budget]}
    out = {}
    for layer, r in removal.items():
        at = [i for i, c in enumerate(r.components) if (layer, c) in kept]
        out[layer] = Removal(
            [r.components[i] for i in at],
            None if r.fractions is None else [r.fractions[i] for i in at],
        )
    return out


def concepts_text(concept_names: Sequence[str]) -> str:
    return ", ".join(concept_names) if concept_names else "the concept labels"
