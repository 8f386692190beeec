"""The edit procedure on the trial's decomposition and, unchanged, on each control: what
training the decomposition added is the lift over the best control.

A control (hpo.debias.controls) is a decomposition that learnt nothing; it gets the same
strategy, budget, fit and α choice. Its edit does not depend on the trained SAE, so a
trial's pruning evaluations share it (`ControlCache`). The budget curve runs the
procedure at several budgets, for the SAE and each control.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hpo.debias.controls import get_control
from hpo.debias.edit.procedure import Decomposition, ScoredEdit
from hpo.debias.edit.run import run_edit
from hpo.debias.edit.target import EditTarget
from hpo.params import AlphaGrid, EditConfig, SAEConfig
from hpo.plans import EditPlan
from hpo.results import control_name


@dataclass(frozen=True)
class Replay:
    """What a stored trial's edits were, re-applied as they were (never chosen again)."""

    debiased: EditPlan | None = None
    controls: Mapping[str, EditPlan] = field(default_factory=dict)


@dataclass(frozen=True)
class EditOutcome:
    """The trial's edit and each control's (by control name, e.g. "svd")."""

    debiased: ScoredEdit
    controls: dict[str, ScoredEdit]
    seconds: dict[str, float] = field(default_factory=dict)  # "edit", "controls"

    def lift(self) -> float | None:
        """Debiased − best control, worst group on validation (None without controls)."""
        if not self.controls:
            return None
        best = max(c.sweep.best.worst_group for c in self.controls.values())
        return self.debiased.sweep.best.worst_group - best


class ControlCache:
    """The controls' scored edits of the last few configurations, by what they depend
    on (edit config, α grid, the SAE config fields each control reads, layers, replayed
    plans), never by the trained SAE."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: dict[str, dict[str, ScoredEdit]] = {}

    def get(self, key: str, make: Callable[[], dict[str, ScoredEdit]]) -> dict[str, ScoredEdit]:
        if key not in self._entries:
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = make()
        return self._entries[key]


def run_controls(
    layers: Sequence[str],
    target: EditTarget,
    edit: EditConfig,
    grid: AlphaGrid,
    sae: SAEConfig,
    *,
    with_test: bool,
    replay: Mapping[str, EditPlan] | None = None,
    cache: ControlCache | None = None,
) -> dict[str, ScoredEdit]:
    """The edit procedure on each control decomposition of `layers` (`edit.controls`)."""
    replay = replay or {}

    def make() -> dict[str, ScoredEdit]:
        made = {}
        for name in edit.controls:
            decompose = get_control(name)
            control = {layer: decompose(target.weight_t(layer), sae) for layer in layers}
            made[name] = run_edit(
                control, target, edit, grid, with_test=with_test, replay=replay.get(name)
            )
        return made

    if cache is None:
        return make()
    # by what the controls read, not the whole SAE config: trials that differ only in
    # loss weights or training share them
    key = json.dumps(
        [
            edit.model_dump(mode="json"),
            grid.model_dump(mode="json"),
            {name: get_control(name).depends_on(sae) for name in edit.controls},
            list(layers),
            with_test,
            {name: plan.to_json() for name, plan in sorted(replay.items())},
        ],
        sort_keys=True,
    )
    return cache.get(key, make)


def edit_with_controls(
    decomposition: Decomposition,
    target: EditTarget,
    edit: EditConfig,
    grid: AlphaGrid,
    sae: SAEConfig,
    *,
    with_test: bool,
    replay: Replay | None = None,
    cache: ControlCache | None = None,
) -> EditOutcome:
    """The edit procedure on the trial's decomposition and on every control."""
    replay = replay or Replay()
    start = time.perf_counter()
    debiased = run_edit(
        decomposition, target, edit, grid, with_test=with_test, replay=replay.debiased
    )
    middle = time.perf_counter()
    controls = run_controls(
        list(decomposition),
        target,
        edit,
        grid,
        sae,
        with_test=with_test,
        replay=replay.controls,
        cache=cache,
    )
    seconds = {"edit": middle - start, "controls": time.perf_counter() - middle}
    return EditOutcome(debiased, controls, seconds)


@dataclass(frozen=True)
class BudgetPoint:
    """One point of a budget curve: the edit with at most `budget` components removed."""

    budget: int | None  # None: no limit
    removed: int  # how many it removed
    val_worst_group: float
    test_worst_group: float


def budget_curve(
    decomposition: Decomposition,
    target: EditTarget,
    edit: EditConfig,
    grid: AlphaGrid,
    sae: SAEConfig,
    budgets: Sequence[int | None],
    cache: ControlCache | None = None,
) -> dict[str, list[BudgetPoint]]:
    """Worst-group accuracy against the number of components removed: the edit
    procedure at each budget (None: no limit), for the decomposition ("debiased") and
    each control; α chosen on val at every point, test reported."""
    curves: dict[str, list[BudgetPoint]] = {"debiased": []}
    curves |= {control_name(name): [] for name in edit.controls}
    for budget in budgets:
        capped = edit.model_copy(update={"max_components": budget})
        outcome = edit_with_controls(
            decomposition, target, capped, grid, sae, with_test=True, cache=cache
        )
        scored = {"debiased": outcome.debiased}
        scored |= {control_name(name): c for name, c in outcome.controls.items()}
        for name, s in scored.items():
            assert s.test is not None
            curves[name].append(
                BudgetPoint(
                    budget, s.components_removed, s.sweep.best.worst_group, s.test.worst_group
                )
            )
    return curves
