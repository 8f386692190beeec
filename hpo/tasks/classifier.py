"""Debiasing a classifier by editing its linear layers: what colored MNIST and user tasks share.

A classifier task hands over a `UserTask` (a trained model, the layer, probe/val/test)
and, if it can, an oracle. From there everything is common: hpo.tasks.bundle caches the
layer's inputs on every split and scores the references once; `evaluate` here hands the
decompositions and the context's `EditTarget` to the edit procedure (hpo.debias.edit),
which edits one layer or several (`params.layers`), chooses α on validation, reports test
at that α, and runs the very same procedure on each control decomposition, so that
every result carries what training the SAE added: its lift over the best control.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from hpo.debias.edit.controlled import (
    BudgetPoint,
    EditOutcome,
    Replay,
    budget_curve,
    edit_with_controls,
)
from hpo.debias.edit.procedure import edited_state
from hpo.debias.scoring import Scorer
from hpo.errors import UserError
from hpo.params import TrialParams
from hpo.results import GroupMetrics, TrialResult, control_name
from hpo.sae.training import SAEData
from hpo.tasks import hugging_face
from hpo.tasks.base import Direction, ModelCard, Saes, TaskConfig
from hpo.tasks.classifier_context import ClassifierContext
from hpo.tasks.classifier_metrics import decomposition_errors, prediction_change, worst_errors

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
    kind: ClassVar[str]

    def decomposed_layers(self, ctx: ClassifierContext, params: TrialParams) -> list[str]:
        if params.layers is None:
            return [ctx.layer]
        valid = ctx.editable_layers
        names = params.layers.split("+")
        for name in names:
            if name not in valid:
                raise UserError(
                    f"params.layers: {name!r} is not a layer this task can edit; valid: "
                    f"{', '.join(valid)} (the task's layer and the editable layers the "
                    "model calls after it), or several joined by '+'"
                )
        return sorted(names, key=valid.index)

    def sae_data(self, ctx: ClassifierContext, layer: str) -> SAEData:
        """Probe-split inputs of `layer`, its pre-activations (bias excluded), concepts;
        one row per token where the layer sees a sequence (see `rows`)."""
        target = ctx.edit_target
        inputs, weight_t = target.rows(layer), target.weight_t(layer)
        return SAEData(
            inputs=inputs,
            targets=inputs @ weight_t,
            weight_t=weight_t,
            concepts=target.concepts(layer),
        )

    @torch.no_grad()
    def evaluate(
        self,
        ctx: ClassifierContext,
        saes: Saes,
        params: TrialParams,
        *,
        with_test: bool,
        replay: Replay | None = None,
    ) -> TrialResult:
        """The edit procedure (hpo.debias.edit) on the trial's decompositions and on each
        control, beside the references; `replay`: a stored trial's plans, applied as they
        were instead of being chosen (or fitted) again."""
        outcome = edit_with_controls(
            saes,
            ctx.edit_target,
            params.edit_config,
            params.alpha_grid,
            params.sae_config,
            with_test=with_test,
            replay=replay,
            cache=ctx.control_cache,
        )
        models = {
            name: {s: m for s, m in per_split.items() if with_test or s != "test"}
            for name, per_split in ctx.references.items()
        }
        models["debiased"] = outcome.debiased.metrics
        models |= {control_name(name): c.metrics for name, c in outcome.controls.items()}
        largest = int(torch.bincount(ctx.splits["val"].groups).max())
        return TrialResult(
            task=self.kind,
            objectives=objectives(outcome),
            ranked={"worst_group": outcome.debiased.sweep.best.ranked_worst_group(largest)},
            errors=self.errors(ctx, saes),
            models=models,
            edit=outcome.debiased.edit(),
            control_edits={name: c.edit() for name, c in outcome.controls.items()},
            timings=dict(outcome.seconds),
        )

    def errors(self, ctx: ClassifierContext, saes: Saes) -> dict[str, float]:
        """The largest decomposition errors over the layers, and the share of validation
        predictions that replacing each weight by its components changes."""
        per_layer = [
            decomposition_errors(sae, self.sae_data(ctx, layer)) for layer, sae in saes.items()
        ]
        return {**worst_errors(per_layer), "prediction_change": prediction_change(ctx, saes)}

    def budget_curve(
        self, ctx: ClassifierContext, saes: Saes, params: TrialParams, budgets: Sequence[int | None]
    ) -> dict[str, list[BudgetPoint]]:
        """Worst-group accuracy against the number of components removed, for the SAE
        and each control (hpo.debias.edit.controlled.budget_curve)."""
        return budget_curve(
            saes,
            ctx.edit_target,
            params.edit_config,
            params.alpha_grid,
            params.sae_config,
            budgets,
            ctx.control_cache,
        )

    def edited_state_dict(
        self, ctx: ClassifierContext, saes: Saes, params: TrialParams, result: TrialResult
    ) -> dict[str, torch.Tensor] | None:
        """The debiased model's state dict at the result's α: the base model's own keys."""
        assert result.edit is not None
        return edited_state(result.edit.plan, saes, ctx.edit_target, result.edit.alpha)

    def score_state_dict(
        self, ctx: ClassifierContext, state: Mapping[str, torch.Tensor]
    ) -> dict[str, GroupMetrics]:
        model = copy.deepcopy(ctx.model)
        model.load_state_dict(state, strict=True)
        if ctx.head is None:
            scorer = Scorer(model, ctx.layer, ctx.splits, ctx.group_names)  # eval, as loaded
            return {split: scorer.metrics(split) for split in ("val", "test")}
        # from the head: the loaded model is the base model with the tensors that differ
        base = ctx.model.state_dict()
        changed = {k: v for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
        return {split: ctx.scorer.metrics(split, changed) for split in ("val", "test")}

    def model_card(self, ctx: ClassifierContext) -> ModelCard:
        return ModelCard(
            summary=ctx.card["summary"],
            class_name=ctx.card["class"],
            load=ctx.card["load"],
            concept_names=ctx.concept_names,
            pretrained=None if ctx.pretrained is None else ctx.card["class"].rpartition(".")[2],
        )

    def model_files(
        self, ctx: ClassifierContext, state: Mapping[str, torch.Tensor]
    ) -> dict[str, bytes]:
        """A Hugging Face model's `save_pretrained` output with `state` (hpo.tasks.hugging_face)."""
        if ctx.pretrained is None:
            return {}
        return hugging_face.pretrained_files(ctx.pretrained, state)


def objectives(outcome: EditOutcome) -> dict[str, float]:
    """What a classifier trial offers to optimise, all on validation."""
    best = outcome.debiased.sweep.best
    values = {
        "worst_group": best.worst_group,
        "mean_group": best.mean_group,
        "overall": best.overall,
        "components_removed": float(outcome.debiased.components_removed),
    }
    lift = outcome.lift()
    if lift is not None:
        values["lift"] = lift
    return values
