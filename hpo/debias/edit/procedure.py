"""The edit procedure: plan which components go (and how much of each), then score the
plan at every α on validation and report test at the α chosen there.

`plan_edit` asks the edit strategy (`EditConfig.ablate`) for a plan, showing it only the
probe labels its regime allows; `score_plan` sweeps α. hpo.debias.edit.run chooses the
settings (an in-trial search), plans and scores, or replays a stored plan as it was. A
control is the very same procedure on another decomposition (hpo.debias.edit.controlled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.debias import ablation
from hpo.debias.edit.alpha import AlphaSweep, sweep_alpha
from hpo.debias.edit.target import EditTarget
from hpo.debias.strategies.base import EditSource
from hpo.debias.strategies.registry import get_strategy
from hpo.params import AlphaGrid, EditConfig
from hpo.plans import EditPlan
from hpo.results import Edit, GroupMetrics
from hpo.sae.model import FaithfulSAE

Decomposition = Mapping[str, FaithfulSAE]  # edited layer -> its decomposition, in call order


@dataclass(frozen=True)
class ScoredEdit:
    """One decomposition's edit: its plan, the α sweep on val, test at that α, and what
    an in-trial edit search tried (hpo.debias.edit.search; JSON, empty without one)."""

    plan: EditPlan
    sweep: AlphaSweep
    test: GroupMetrics | None
    search: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, GroupMetrics]:
        return {"val": self.sweep.best, **({} if self.test is None else {"test": self.test})}

    @property
    def components_removed(self) -> int:
        return self.plan.components_removed

    def edit(self) -> Edit:
        return Edit(
            plan=self.plan,
            alpha=self.sweep.alpha,
            alpha_curve=self.sweep.curve(),
            search=list(self.search),
        )


def plan_edit(
    decomposition: Decomposition,
    target: EditTarget,
    config: EditConfig,
    *,
    memo: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> EditPlan:
    """Per layer, which components go and how much of each: the strategy `config.ablate`
    chooses, seeing only the probe labels its regime allows. `memo`: fits shared by the
    plans of one search; `settings`: what a search chose, recorded in the plan."""
    strategy = get_strategy(config.ablate)
    group_loss = None
    if strategy.labels == "group":
        group_loss = target.group_loss(
            lambda removed, shifts: target.overrides(
                removed, 1.0, compensate_bias=config.ablate_bias, bias_shift=shifts
            )
        )
    layers = list(decomposition)
    removal = strategy.select(
        EditSource(
            saes=decomposition,
            config=config,
            probe_inputs={layer: target.rows(layer) for layer in layers},
            probe_concepts={layer: target.concepts(layer) for layer in layers},
            group_loss=group_loss,
            weights={layer: target.weight_t(layer) for layer in layers},
            memo=memo,
        )
    )
    return EditPlan(
        removal=removal,
        strategy=strategy.name,
        labels=strategy.labels,
        compensate_bias=config.ablate_bias,
        settings=dict(settings or {}),
    )


def removed_parts(plan: EditPlan, decomposition: Decomposition) -> dict[str, torch.Tensor]:
    """Per layer, Σ fraction_c · component_c of the plan's components, (in × out)."""
    return {
        layer: ablation.ablated_sum(decomposition[layer], r.components, r.fractions)
        for layer, r in plan.removal.items()
    }


def applied(
    plan: EditPlan, parts: Mapping[str, torch.Tensor], target: EditTarget, alpha: float
) -> dict[str, torch.Tensor]:
    """The model's new tensors for `plan` (its removed `parts`) at strength α."""
    shift = None
    if plan.bias_shift is not None:
        shift = {
            layer: torch.tensor(values, dtype=parts[layer].dtype, device=parts[layer].device)
            for layer, values in plan.bias_shift.items()
        }
    return target.overrides(parts, alpha, compensate_bias=plan.compensate_bias, bias_shift=shift)


@torch.no_grad()
def score_plan(
    plan: EditPlan,
    decomposition: Decomposition,
    target: EditTarget,
    grid: AlphaGrid,
    *,
    with_test: bool,
) -> ScoredEdit:
    """α swept on val (or fixed by the grid), the same in every edited layer; test only
    at that α, if asked."""
    parts = removed_parts(plan, decomposition)
    sweep = sweep_alpha(
        lambda a: target.scorer.metrics("val", applied(plan, parts, target, a)), grid
    )
    test = None
    if with_test:
        test = target.scorer.metrics("test", applied(plan, parts, target, sweep.alpha))
    return ScoredEdit(plan, sweep, test)


def edited_state(
    plan: EditPlan, decomposition: Decomposition, target: EditTarget, alpha: float
) -> dict[str, torch.Tensor]:
    """The edited model's whole state dict at α: the base model's own keys."""
    state = {k: v.detach().clone() for k, v in target.model.state_dict().items()}
    new = applied(plan, removed_parts(plan, decomposition), target, alpha)
    state.update({k: v.detach() for k, v in new.items()})
    return state
