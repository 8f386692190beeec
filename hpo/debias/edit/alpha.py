"""How strongly an edit is applied: α swept on validation, and the one chosen.

W' = W − α · (what the plan removes): α = 0 is the original model, α = 1 the plan as
fitted, α > 1 removes more. The grid is the study's (`AlphaGrid`); a best α at its upper
edge extends it instead of stopping where the best may lie beyond.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hpo.params import AlphaGrid
from hpo.results import GroupMetrics


def pick_alpha(sweep: Sequence[GroupMetrics]) -> int:
    """Index of the best α on validation: worst group first, then the worst quarter of
    the groups' mean, then the mean over groups (`GroupMetrics.rank_key`: with many
    groups the worst often ties at 0 for every α), then the smaller α."""
    keys = [(*m.rank_key(), -i) for i, m in enumerate(sweep)]
    return max(range(len(sweep)), key=keys.__getitem__)


def alpha_grid(alpha_max: float, steps: int) -> list[float]:
    """Evenly spaced α from 0, rounded so that α = 0.7 is the same float whether it comes
    from this grid or from a recorded 0.7 (export re-scores at the recorded α)."""
    return [round(a, 6) for a in np.linspace(0.0, alpha_max, steps).tolist()]


@dataclass(frozen=True)
class AlphaCurve:
    """Validation worst-group and mean-group accuracy at each α tried."""

    alphas: list[float]
    val_worst_group: list[float]
    val_mean_group: list[float]

    def to_json(self) -> dict[str, list[float]]:
        return {
            "alphas": list(self.alphas),
            "val_worst_group": list(self.val_worst_group),
            "val_mean_group": list(self.val_mean_group),
        }


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
        return AlphaCurve(
            list(self.alphas),
            [m.worst_group for m in self.metrics],
            [m.mean_group for m in self.metrics],
        ).to_json()


def sweep_alpha(score: Callable[[float], GroupMetrics], grid: AlphaGrid) -> AlphaSweep:
    """Score the edit at every α of the grid (or at the fixed `grid.alpha`) on val and
    pick one (`pick_alpha`); a best α at the grid's upper edge extends the grid by its
    own length, at most `grid.alpha_extend` times."""
    if grid.alpha is not None:
        return AlphaSweep([grid.alpha], [score(grid.alpha)], 0)
    alphas = alpha_grid(grid.alpha_max, grid.alpha_steps)
    metrics = [score(a) for a in alphas]
    best = pick_alpha(metrics)
    for k in range(2, grid.alpha_extend + 2):
        if best != len(alphas) - 1:
            break  # the best α lies inside the grid
        longer = alpha_grid(k * grid.alpha_max, k * (grid.alpha_steps - 1) + 1)
        extra = longer[len(alphas) :]
        metrics += [score(a) for a in extra]
        alphas = alphas + extra
        best = pick_alpha(metrics)
    return AlphaSweep(alphas, metrics, best)
