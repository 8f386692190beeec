"""Group accuracies and the α sweep, from cached inputs of the edited layer.

The trunk never reruns here: an α sweep is one batched matmul over the cached layer
inputs of a split, for every α at once.
"""

from __future__ import annotations

import numpy as np
import torch

from hpo.debias.ablation import swept_weights
from hpo.models.classifiers import ColoredMnistClassifier

Metrics = dict  # {"worst_group", "mean_group", "overall", "groups": {name: acc}}


def group_metrics(
    correct: torch.Tensor, group_ids: torch.Tensor, names: tuple[str, ...]
) -> Metrics:
    """Accuracy per group, worst and mean over groups, and overall; from a bool vector."""
    n = len(names)
    hits = torch.bincount(group_ids, weights=correct.double(), minlength=n)
    sizes = torch.bincount(group_ids, minlength=n).double()
    acc = [
        a if s > 0 else None
        for a, s in zip((hits / sizes.clamp(min=1)).tolist(), sizes.tolist(), strict=True)
    ]
    present = [a for a in acc if a is not None]
    return {
        "worst_group": min(present),
        "mean_group": float(np.mean(present)),
        "overall": float(correct.double().mean()),
        "groups": dict(zip(names, acc, strict=True)),
    }


@torch.no_grad()
def score_weight(
    model: ColoredMnistClassifier,
    layer: str,
    z: torch.Tensor,
    digits: torch.Tensor,
    group_ids: torch.Tensor,
    names: tuple[str, ...],
    weight: torch.Tensor | None = None,
) -> Metrics:
    pred = model.head(z, layer, weight).argmax(-1)
    return group_metrics(pred == digits, group_ids, names)


@torch.no_grad()
def alpha_sweep(
    model: ColoredMnistClassifier,
    layer: str,
    z: torch.Tensor,
    digits: torch.Tensor,
    group_ids: torch.Tensor,
    names: tuple[str, ...],
    ablated_t: torch.Tensor,
    alphas: torch.Tensor,
) -> list[Metrics]:
    """Metrics of the debiased model at every α, in one batched pass."""
    weight = getattr(model, layer).weight
    preds = model.head(z, layer, swept_weights(weight, ablated_t, alphas)).argmax(-1)
    return [group_metrics(p == digits, group_ids, names) for p in preds]


def pick_alpha(sweep: list[Metrics]) -> int:
    """Index of the best α on validation: worst-group first, then mean-group, then smaller α."""
    keys = [(m["worst_group"], m["mean_group"], -i) for i, m in enumerate(sweep)]
    return max(range(len(sweep)), key=keys.__getitem__)


def alpha_grid(alpha_max: float, steps: int) -> torch.Tensor:
    """Evenly spaced α from 0, rounded so that α = 0.7 is the same float32 whether it
    comes from this grid or from a recorded 0.7 (export re-scores at the recorded α)."""
    return torch.tensor([round(a, 6) for a in np.linspace(0.0, alpha_max, steps).tolist()])
