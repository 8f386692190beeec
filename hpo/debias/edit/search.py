"""Choosing the edit inside a trial: every setting of `EditConfig.edit_search`, planned on
part of the probe split and scored on the rest, for one decomposition.

Each candidate is planned as any edit would be, on the probe split less a held-out share
of each group, and scored there with α swept on the held-out share; the best (worst
group, then the worst quarter's mean, then the mean over groups, then fewer components)
is the edit config the trial then plans on the whole probe split and scores on
validation. The validation split thus chooses α and ranks trials, as without a search,
and never the edit's settings. Fits that differ only in their budget share the first,
unbudgeted fit (`EditSource.memo`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from hpo.debias.edit.procedure import Decomposition, plan_edit, score_plan
from hpo.debias.edit.target import EditTarget
from hpo.params import AlphaGrid, EditConfig
from hpo.results import GroupMetrics


@dataclass(frozen=True)
class Candidate:
    """One setting the search tried, and how its edit scored on the held-out share."""

    settings: dict[str, Any]  # the searched fields' values
    held_out: GroupMetrics
    alpha: float
    components: int

    def rank(self) -> tuple[float, ...]:
        return (*self.held_out.rank_key(), -self.components)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": dict(self.settings),
            "held_out_worst_group": self.held_out.worst_group,
            "held_out_worst_groups_mean": self.held_out.worst_groups_mean,
            "held_out_mean_group": self.held_out.mean_group,
            "alpha": self.alpha,
            "components": self.components,
        }


def candidates(config: EditConfig) -> list[dict[str, Any]]:
    """Every combination of the searched values, in field order ([{}]: no search)."""
    settings = config.edit_search.settings()
    names = list(settings)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*settings.values())
    ]


def searched(config: EditConfig, settings: dict[str, Any]) -> EditConfig:
    """`config` with the searched fields set, and no search left in it."""
    return EditConfig.model_validate({**config.model_dump(), **settings, "edit_search": {}})


def choose_edit(
    decomposition: Decomposition, target: EditTarget, config: EditConfig, grid: AlphaGrid
) -> tuple[EditConfig, list[Candidate]]:
    """The edit config whose plan ranks best on the held-out share of probe, and every
    candidate's score."""
    inner = target.holding_out(config.edit_search.holdout)
    memo: dict[str, Any] = {}
    tried = []
    for settings in candidates(config):
        plan = plan_edit(decomposition, inner, searched(config, settings), memo=memo)
        scored = score_plan(plan, decomposition, inner, grid, with_test=False)
        tried.append(
            Candidate(settings, scored.sweep.best, scored.sweep.alpha, plan.components_removed)
        )
    best = max(range(len(tried)), key=lambda i: (*tried[i].rank(), -i))
    return searched(config, tried[best].settings), tried
