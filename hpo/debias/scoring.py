"""Group accuracies of a classifier, with some of its parameters replaced.

`Scorer` scores any edit of the model (a mapping from parameter names to new tensors)
on a split. Where the model can run from the decomposed layer's input (`head`, see
hpo.models.classifiers), it starts from the cached layer inputs and the trunk never
reruns; for any other model it runs the whole forward pass on the split's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from hpo.config import TrialParams
from hpo.results import GroupMetrics

Overrides = Mapping[str, torch.Tensor]  # parameter name (model.state_dict() key) -> value


@dataclass
class CachedSplit:
    """One split, ready for scoring: the decomposed layer's inputs, labels, groups, and
    the model inputs where scoring runs the whole model (None when it runs the head)."""

    z: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor
    concepts: torch.Tensor | None = None
    x: torch.Tensor | None = None


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

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.head(z, self.layer)


def runs_from_layer(model: nn.Module, layer: str) -> bool:
    """Whether `model` can run from `layer`'s input (the fast path: cached inputs)."""
    return callable(getattr(model, "head", None)) and layer in getattr(model, "LAYERS", ())


class Scorer:
    """Logits and group metrics of `model` with parameters replaced, per split."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        splits: Mapping[str, CachedSplit],
        group_names: Sequence[str],
        batch_size: int = 4096,
    ) -> None:
        self.model, self.layer, self.splits = model, layer, splits
        self.group_names = tuple(group_names)
        self.batch_size = batch_size
        self.head = _Head(model, layer) if runs_from_layer(model, layer) else None

    @torch.no_grad()
    def logits(self, split: str, overrides: Overrides | None = None) -> torch.Tensor:
        return self.forward(split, overrides)

    def forward(self, split: str, overrides: Overrides | None = None) -> torch.Tensor:
        """`logits` with gradients flowing to the overrides (what fitting an edit needs)."""
        s = self.splits[split]
        overrides = dict(overrides or {})
        if s.x is None:
            if self.head is None:
                raise ValueError(f"split {split} has no model inputs to score")
            swapped = {f"model.{k}": v for k, v in overrides.items()}
            return functional_call(self.head, swapped, (s.z,))
        return torch.cat(
            [
                functional_call(self.model, overrides, (s.x[i : i + self.batch_size],))
                for i in range(0, len(s.x), self.batch_size)
            ]
        )

    def metrics(self, split: str, overrides: Overrides | None = None) -> GroupMetrics:
        s = self.splits[split]
        pred = self.logits(split, overrides).argmax(-1)
        return group_metrics(pred == s.y, s.groups, self.group_names)


def pick_alpha(sweep: Sequence[GroupMetrics]) -> int:
    """Index of the best α on validation: worst-group first, then mean-group, then smaller α."""
    keys = [(m.worst_group, m.mean_group, -i) for i, m in enumerate(sweep)]
    return max(range(len(sweep)), key=keys.__getitem__)


def alpha_grid(alpha_max: float, steps: int) -> list[float]:
    """Evenly spaced α from 0, rounded so that α = 0.7 is the same float whether it comes
    from this grid or from a recorded 0.7 (export re-scores at the recorded α)."""
    return [round(a, 6) for a in np.linspace(0.0, alpha_max, steps).tolist()]


@dataclass(frozen=True)
class AlphaSweep:
    """Validation metrics at each α tried, and the index of the one chosen."""

    alphas: list[float]
    metrics: list[GroupMetrics]
    chosen: int

    @property
    def alpha(self) -> float:
        return self.alphas[self.chosen]

    @property
    def best(self) -> GroupMetrics:
        return self.metrics[self.chosen]

    def curve(self) -> dict[str, list[float]]:
        return {
            "alphas": list(self.alphas),
            "val_worst_group": [m.worst_group for m in self.metrics],
            "val_mean_group": [m.mean_group for m in self.metrics],
        }


def sweep_alpha(score: Callable[[float], GroupMetrics], params: TrialParams) -> AlphaSweep:
    """Score the edit at every α of the grid (or at the fixed `params.alpha`) on val and
    pick one (`pick_alpha`); a best α at the grid's upper edge extends the grid by its
    own length, at most `params.alpha_extend` times, instead of stopping where the best
    may lie beyond."""
    if params.alpha is not None:
        return AlphaSweep([params.alpha], [score(params.alpha)], 0)
    alphas = alpha_grid(params.alpha_max, params.alpha_steps)
    metrics = [score(a) for a in alphas]
    best = pick_alpha(metrics)
    for k in range(2, params.alpha_extend + 2):
        if best != len(alphas) - 1:
            break  # the best α lies inside the grid
        longer = alpha_grid(k * params.alpha_max, k * (params.alpha_steps - 1) + 1)
        extra = longer[len(alphas) :]
        metrics += [score(a) for a in extra]
        alphas = alphas + extra
        best = pick_alpha(metrics)
    return AlphaSweep(alphas, metrics, best)
