"""Group accuracies of a classifier, with some of its parameters replaced.

`Scorer` scores any edit of the model (a mapping from parameter names to new tensors)
on a split, from the decomposed layer on wherever it can: with a `Head`
(hpo.models.head: a graph split of a user's exported model, or the user's own) it
starts from the values cached at the cut, and the trunk never reruns; the built-in
models run their own `head` (hpo.models.classifiers) from the cached layer inputs.
Only a model with neither, or an edit of a tensor the head does not own, runs the whole
forward pass on the split's inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from hpo.models.classifiers import LayerModel, runs_from_layer
from hpo.models.graph_split import LAYER_INPUT
from hpo.models.head import Head, logits_of
from hpo.models.model_inputs import ModelInputs, call_args, n_samples, take
from hpo.results import GroupMetrics

Overrides = Mapping[str, torch.Tensor]  # parameter name (model.state_dict() key) -> value


@dataclass
class CachedSplit:
    """One split, ready for scoring: the decomposed layer's inputs, labels, groups, the
    other values a head reads across the cut (`carry`, by name; one row per sample), and
    the model inputs where scoring runs the whole model (None when it runs a head): a
    tensor, or a dict of tensors passed as keyword arguments."""

    z: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor
    concepts: torch.Tensor | None = None
    x: ModelInputs | None = None
    carry: dict[str, torch.Tensor] = field(default_factory=dict)

    def values(self) -> dict[str, torch.Tensor]:
        """What a head takes: the layer's input and the carried values."""
        return {LAYER_INPUT: self.z, **self.carry}

    def subset(self, index: torch.Tensor) -> CachedSplit:
        """The samples at `index` (a sample's every token where the layer sees sequences)."""
        return CachedSplit(
            z=self.z[index],
            y=self.y[index],
            groups=self.groups[index],
            concepts=None if self.concepts is None else self.concepts[index],
            x=None if self.x is None else take(self.x, index),
            carry={name: value[index] for name, value in self.carry.items()},
        )


def group_metrics(
    correct: torch.Tensor, group_ids: torch.Tensor, names: Sequence[str]
) -> GroupMetrics:
    """Accuracy per group, worst and mean over present groups, and overall."""
    n = len(names)
    hits = torch.bincount(group_ids, weights=correct.double(), minlength=n)
    sizes = torch.bincount(group_ids, minlength=n).double()
    acc = [
        a if s > 0 else None
        for a, s in zip((hits / sizes.clamp(min=1)).tolist(), sizes.tolist(), strict=True)
    ]
    present = [a for a in acc if a is not None]
    return GroupMetrics(
        worst_group=min(present),
        mean_group=float(np.mean(present)),
        overall=float(correct.double().mean()),
        groups=dict(zip(names, acc, strict=True)),
    )


class _Head(nn.Module):
    """The model from `layer` on, as a module: so that functional_call can swap its
    parameters (named "model.<state dict key>")."""

    def __init__(self, model: LayerModel, layer: str) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.head(z, self.layer)


class Scorer:
    """Logits and group metrics of `model` with parameters replaced, per split.
    `head`: the model from `layer` on (hpo.models.head), used for every edit it takes."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        splits: Mapping[str, CachedSplit],
        group_names: Sequence[str],
        batch_size: int = 4096,
        head: Head | None = None,
    ) -> None:
        self.model, self.layer, self.splits = model, layer, splits
        self.group_names = tuple(group_names)
        self.batch_size = batch_size
        self.head = head
        self.own_head = _Head(model, layer) if runs_from_layer(model, layer) else None

    @torch.no_grad()
    def logits(self, split: str, overrides: Overrides | None = None) -> torch.Tensor:
        return self.forward(split, overrides)

    def forward(self, split: str, overrides: Overrides | None = None) -> torch.Tensor:
        """`logits` with gradients flowing to the overrides (what fitting an edit needs)."""
        s = self.splits[split]
        overrides = dict(overrides or {})
        if self.head is not None and self.head.takes(overrides):
            return self.head(s.values(), overrides)
        if s.x is None:
            if self.own_head is None:
                raise ValueError(
                    f"split {split} has no model inputs to score an edit of "
                    f"{', '.join(sorted(overrides)) or 'nothing'} with"
                )
            swapped = {f"model.{k}": v for k, v in overrides.items()}
            logits: torch.Tensor = functional_call(self.own_head, swapped, (s.z,))
            return logits
        b = self.batch_size
        return torch.cat(
            [
                logits_of(
                    functional_call(self.model, overrides, *call_args(take(s.x, slice(i, i + b))))
                )
                for i in range(0, n_samples(s.x), b)
            ]
        )

    def metrics(self, split: str, overrides: Overrides | None = None) -> GroupMetrics:
        s = self.splits[split]
        pred = self.logits(split, overrides).argmax(-1)
        return group_metrics(pred == s.y, s.groups, self.group_names)
