"""One decomposition's edit, start to end: choose its settings (if the config searches
them), plan it on the whole probe split, score it over α on validation; or replay a
stored plan as it was, never choosing or fitting again."""

from __future__ import annotations

import torch

from hpo.debias.edit.procedure import Decomposition, ScoredEdit, plan_edit, score_plan
from hpo.debias.edit.search import choose_edit
from hpo.debias.edit.target import EditTarget
from hpo.params import AlphaGrid, EditConfig
from hpo.plans import EditPlan


@torch.no_grad()
def run_edit(
    decomposition: Decomposition,
    target: EditTarget,
    config: EditConfig,
    grid: AlphaGrid,
    *,
    with_test: bool,
    replay: EditPlan | None = None,
) -> ScoredEdit:
    """The edit of `decomposition`: its settings chosen on a held-out share of probe
    (`config.edit_search`, if any), planned, then scored; or `replay`, applied as it was."""
    if replay is not None:
        return score_plan(replay, decomposition, target, grid, with_test=with_test)
    if not config.edit_search.size:
        plan = plan_edit(decomposition, target, config)
        return score_plan(plan, decomposition, target, grid, with_test=with_test)
    chosen, tried = choose_edit(decomposition, target, config, grid)
    settings = {name: getattr(chosen, name) for name in config.edit_search.settings()}
    plan = plan_edit(decomposition, target, chosen, settings=settings)
    scored = score_plan(plan, decomposition, target, grid, with_test=with_test)
    return ScoredEdit(scored.plan, scored.sweep, scored.test, [c.to_json() for c in tried])
