"""Debiasing a classifier by editing its linear layers: what colored MNIST and user tasks share.

A classifier task hands over a `UserTask` (a trained model, the layer, probe/val/test)
and, if it can, an oracle. From there everything is common: hpo.tasks.bundle caches the
layer's inputs on every split and scores the references once; `evaluate` here edits one
layer or several (`params.layers`) by the removal the edit strategy (`params.ablate`)
chooses, α chosen on validation and test reported only at that α, and runs the very same
procedure on each control decomposition (hpo.debias.controls), so that every result
carries what training the SAE added: its lift over the best control.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from hpo.config import TrialParams
from hpo.debias import ablation
from hpo.debias.controls import CONTROLS, control_name
from hpo.debias.removal import Removal, recorded_fractions, recorded_removal
from hpo.debias.scoring import AlphaSweep, Scorer, sweep_alpha
from hpo.debias.strategies.base import EditSource
from hpo.debias.strategies.registry import get_strategy
from hpo.errors import UserError
from hpo.models.linear_layers import per_row, rows
from hpo.results import Edit, GroupMetrics, TrialResult
from hpo.sae.training import SAEData
from hpo.tasks.base import BudgetPoint, Direction, ModelCard, Saes, TaskConfig
from hpo.tasks.bundle import ClassifierContext
from hpo.tasks.classifier_metrics import (
    balanced_probe_loss,
    decomposition_errors,
    prediction_change,
    worst_errors,
)

OBJECTIVES: dict[str, Direction] = {
    "worst_group": "maximize",
    "lift": "maximize",  # debiased − best control (needs params.controls)
    "components_removed": "minimize",
    "mean_group": "maximize",
    "overall": "maximize",
    "faithfulness_error": "minimize",
    "reconstruction_error": "minimize",
    "prediction_change": "minimize",
}


class ClassifierConfig(TaskConfig):
    """Base of a classifier task's `[task]` section: what its results offer to optimise."""

    objectives: ClassVar[Mapping[str, Direction]] = OBJECTIVES


class ClassifierTask:
    """The scoring half of every classifier task; subclasses build and load bundles."""

    config: ClassVar[type[TaskConfig]]

    def decomposed_layers(self, ctx: ClassifierContext, params: TrialParams) -> list[str]:
        if params.layers is None:
            return [ctx.layer]
        valid = ctx.editable_layers
        names = params.layers.split("+")
        for name in names:
            if name not in valid:
                raise UserError(
                    f"params.layers: {name!r} is not a layer this task can edit; valid: "
                    f"{', '.join(valid)} (the task's layer and the nn.Linear layers the "
                    "model calls after it), or several joined by '+'"
                )
        return sorted(names, key=valid.index)

    def sae_data(self, ctx: ClassifierContext, layer: str) -> SAEData:
        """Probe-split inputs of `layer`, its pre-activations (bias excluded), concepts;
        one row per token where the layer sees a sequence (see `rows`)."""
        inputs, concepts = self.probe_rows(ctx, layer)
        weight_t = ctx.weight_of(layer).detach().T.contiguous()
        return SAEData(
            inputs=inputs, targets=inputs @ weight_t, weight_t=weight_t, concepts=concepts
        )

    def probe_rows(self, ctx: ClassifierContext, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`layer`'s probe inputs as rows (a token each where it sees sequences) and each
        row's concept, one-hot."""
        stored = ctx.probe_inputs[layer]
        return rows(stored), per_row(self.probe_concepts(ctx), stored)

    def removal(
        self, ctx: ClassifierContext, saes: Saes, params: TrialParams
    ) -> dict[str, Removal]:
        """Per layer, which components go and how much of each: the edit strategy
        `params.ablate` chooses, seeing only the probe labels its regime allows."""
        strategy = get_strategy(params.ablate)
        group_loss = None
        if strategy.labels == "group":
            group_loss = balanced_probe_loss(
                ctx, lambda removed: self.model_edit(ctx, removed, 1.0, params)
            )
        # rows and concepts only: no pre-activations, which a choice never reads
        data = {layer: self.probe_rows(ctx, layer) for layer in saes}
        return strategy.select(
            EditSource(
                saes=saes,
                params=params,
                probe_inputs={layer: inputs for layer, (inputs, _) in data.items()},
                probe_concepts={layer: concepts for layer, (_, concepts) in data.items()},
                group_loss=group_loss,
                weights={layer: ctx.weight_of(layer).detach().T.contiguous() for layer in saes},
            )
        )

    def probe_concepts(self, ctx: ClassifierContext) -> torch.Tensor:
        """The probe split's concept labels, one-hot [N, n_concepts]."""
        concepts = ctx.splits["probe"].concepts
        assert concepts is not None
        return F.one_hot(concepts, len(ctx.concept_names)).float()

    @torch.no_grad()
    def evaluate(
        self,
        ctx: ClassifierContext,
        saes: Saes,
        params: TrialParams,
        *,
        with_test: bool,
        removal: Mapping[str, Removal] | None = None,
        control_removals: Mapping[str, Mapping[str, Removal]] | None = None,
    ) -> TrialResult:
        """α chosen on val (or fixed), the same in every edited layer; test only reported,
        at that α. `removal` (and `control_removals`, by control): what a stored trial
        removed, applied as it was instead of being chosen (or fitted) again. Beside the
        references, the same edit procedure on each control decomposition
        (`params.controls`), and the lift over the best of them."""
        scored = self.edit_and_score(ctx, saes, params, with_test, removal)
        models = {
            name: {s: m for s, m in per_split.items() if with_test or s != "test"}
            for name, per_split in ctx.references.items()
        }
        models["debiased"] = scored.metrics
        controls = self.controls(ctx, saes, params, with_test, control_removals)
        models |= {control_name(name): c.metrics for name, c in controls.items()}
        best_val = scored.sweep.best
        objectives = {
            "worst_group": best_val.worst_group,
            "mean_group": best_val.mean_group,
            "overall": best_val.overall,
            "components_removed": float(scored.components_removed),
        }
        if controls:
            best_control = max(c.sweep.best.worst_group for c in controls.values())
            objectives["lift"] = best_val.worst_group - best_control
        return TrialResult(
            task=self.kind,
            objectives=objectives,
            errors={
                **worst_errors(
                    [
                        decomposition_errors(sae, self.sae_data(ctx, layer))
                        for layer, sae in saes.items()
                    ]
                ),
                "prediction_change": prediction_change(ctx, saes),
            },
            models=models,
            edit=scored.edit(params),
            control_edits={name: c.edit(params) for name, c in controls.items()},
        )

    def edit_and_score(
        self,
        ctx: ClassifierContext,
        saes: Saes,
        params: TrialParams,
        with_test: bool,
        removal: Mapping[str, Removal] | None = None,
    ) -> ScoredEdit:
        """The edit of `saes` (the strategy's removal, or `removal`), α swept on val, and
        test at that α if asked."""
        removal = dict(removal) if removal is not None else self.removal(ctx, saes, params)
        ablated = {layer: r.ablated_sum(saes[layer]) for layer, r in removal.items()}

        def edit(alpha: float) -> dict[str, torch.Tensor]:
            return self.model_edit(ctx, ablated, alpha, params)

        sweep = sweep_alpha(lambda a: ctx.scorer.metrics("val", edit(a)), params)
        test = ctx.scorer.metrics("test", edit(sweep.alpha)) if with_test else None
        return ScoredEdit(removal, sweep, test)

    def controls(
        self,
        ctx: ClassifierContext,
        saes: Saes,
        params: TrialParams,
        with_test: bool,
        recorded: Mapping[str, Mapping[str, Removal]] | None = None,
    ) -> dict[str, ScoredEdit]:
        """The trial's edit procedure on each control decomposition of the same layers
        (`recorded`: their removals as a stored trial made them). They do not depend on
        the trained SAE, so a trial's pruning evaluations share them (the context keeps
        the last few)."""
        recorded = recorded or {}
        key = (params.model_dump_json(), tuple(saes), with_test, repr(sorted(recorded.items())))
        if key not in ctx.control_cache:
            made = {}
            for name in params.controls:
                decompose = CONTROLS[name]
                control = {
                    layer: decompose(ctx.weight_of(layer).detach().T.contiguous(), params)
                    for layer in saes
                }
                made[name] = self.edit_and_score(
                    ctx, control, params, with_test, recorded.get(name)
                )
            while len(ctx.control_cache) >= CONTROL_CACHE_SIZE:
                ctx.control_cache.pop(next(iter(ctx.control_cache)))
            ctx.control_cache[key] = made
        return ctx.control_cache[key]

    @torch.no_grad()
    def budget_curve(
        self, ctx: ClassifierContext, saes: Saes, params: TrialParams, budgets: Sequence[int | None]
    ) -> dict[str, list[BudgetPoint]]:
        """Worst-group accuracy against the number of components removed: the trial's
        edit procedure at each budget (None: no limit), for its SAE (`debiased`) and each
        control; α chosen on val at every point, test reported."""
        curves: dict[str, list[BudgetPoint]] = {"debiased": []}
        curves |= {control_name(name): [] for name in params.controls}
        for budget in budgets:
            capped = params.model_copy(update={"max_components": budget})
            edits = {"debiased": self.edit_and_score(ctx, saes, capped, True)}
            for name, c in self.controls(ctx, saes, capped, True).items():
                edits[control_name(name)] = c
            for name, scored in edits.items():
                assert scored.test is not None
                curves[name].append(
                    BudgetPoint(
                        budget,
                        scored.components_removed,
                        scored.sweep.best.worst_group,
                        scored.test.worst_group,
                    )
                )
        return curves

    def edited_state_dict(
        self, ctx: ClassifierContext, saes: Saes, params: TrialParams, result: TrialResult
    ) -> dict[str, torch.Tensor] | None:
        """The debiased model's state dict at the result's α: the base model's own keys."""
        assert result.edit is not None
        ablated = {
            layer: r.ablated_sum(saes[layer]) for layer, r in recorded_removal(result.edit).items()
        }
        state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        edit = self.model_edit(ctx, ablated, result.edit.alpha, params)
        state.update({k: v.detach() for k, v in edit.items()})
        return state

    def model_edit(
        self,
        ctx: ClassifierContext,
        ablated: Mapping[str, torch.Tensor],
        alpha: float,
        params: TrialParams,
    ) -> dict[str, torch.Tensor]:
        """The edited layers' new tensors: W − α·Aᵀ in each, and with `ablate_bias` each
        bias moved by what its removed components contributed on average over probe."""
        out: dict[str, torch.Tensor] = {}
        for name, ablated_t in ablated.items():
            layer = ctx.model.get_submodule(name)
            # detached: fitting a removal must not write gradients into the base model
            weight = layer.weight.detach()
            out[f"{name}.weight"] = ablation.debiased_weight(weight, ablated_t, alpha)
            if params.ablate_bias and getattr(layer, "bias", None) is not None:
                mean_input = rows(ctx.probe_inputs[name]).mean(dim=0)
                out[f"{name}.bias"] = ablation.compensated_bias(
                    layer.bias.detach(), ablated_t, mean_input, alpha
                )
        return out

    def score_state_dict(
        self, ctx: ClassifierContext, state: Mapping[str, torch.Tensor]
    ) -> dict[str, GroupMetrics]:
        model = copy.deepcopy(ctx.model)
        model.load_state_dict(state, strict=True)
        scorer = Scorer(model, ctx.layer, ctx.splits, ctx.group_names)  # eval, as loaded
        return {split: scorer.metrics(split) for split in ("val", "test")}

    def model_card(self, ctx: ClassifierContext) -> ModelCard:
        return ModelCard(
            summary=ctx.card["summary"],
            class_name=ctx.card["class"],
            load=ctx.card["load"],
            concept_names=ctx.concept_names,
        )

    kind: ClassVar[str]


CONTROL_CACHE_SIZE = 4  # trials' worth of control scores a context keeps


@dataclass(frozen=True)
class ScoredEdit:
    """One decomposition's edit: what it removed, the α sweep on val, test at that α."""

    removal: dict[str, Removal]
    sweep: AlphaSweep
    test: GroupMetrics | None

    @property
    def metrics(self) -> dict[str, GroupMetrics]:
        return {"val": self.sweep.best, **({} if self.test is None else {"test": self.test})}

    @property
    def components_removed(self) -> int:
        return sum(len(r.components) for r in self.removal.values())

    def edit(self, params: TrialParams) -> Edit:
        return Edit(
            layer="+".join(self.removal),
            components={layer: r.components for layer, r in self.removal.items()},
            fractions=recorded_fractions(self.removal),
            alpha=self.sweep.alpha,
            selection=params.ablate,
            alpha_curve=self.sweep.curve(),
            labels=get_strategy(params.ablate).labels,
        )
