"""Debiasing a classifier at one linear layer: what colored MNIST and user tasks share.

A classifier task hands over a `UserTask` (a trained model, the layer, probe/val/test)
and, if it can, an oracle. From there everything is common: hpo.tasks.bundle caches the
layer's inputs on every split and scores the references once; `evaluate` here scores a
Faithful-SAE ablation, choosing α on validation and reporting test only at that α.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from hpo.config import TrialParams
from hpo.debias import ablation
from hpo.debias.scoring import alpha_grid, pick_alpha
from hpo.results import Edit, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData
from hpo.tasks.base import Direction, TaskConfig
from hpo.tasks.bundle import ClassifierContext

OBJECTIVES: dict[str, Direction] = {
    "worst_group": "maximize",
    "mean_group": "maximize",
    "overall": "maximize",
    "faithfulness_error": "minimize",
    "reconstruction_error": "minimize",
}


class ClassifierTask:
    """The scoring half of every classifier task; subclasses build and load bundles."""

    objectives: ClassVar[Mapping[str, Direction]] = OBJECTIVES
    config: ClassVar[type[TaskConfig]]

    def sae_data(self, ctx: ClassifierContext) -> SAEData:
        """Probe-split layer inputs, their pre-activations (bias excluded), concept labels."""
        probe = ctx.splits["probe"]
        weight_t = ctx.weight.detach().T.contiguous()
        assert probe.concepts is not None
        concepts = torch.nn.functional.one_hot(probe.concepts, len(ctx.concept_names)).float()
        return SAEData(
            inputs=probe.z, targets=probe.z @ weight_t, weight_t=weight_t, concepts=concepts
        )

    def ablated_components(
        self, ctx: ClassifierContext, sae: FaithfulSAE, params: TrialParams
    ) -> list[int]:
        conditioned = ablation.conditioned_components(
            len(ctx.concept_names) * params.concept_latents
        )
        if params.ablate == "conditioned":
            return conditioned
        data = self.sae_data(ctx)
        exclude = conditioned if params.ablate == "both" else []
        by_attribution = ablation.attribution_components(
            sae, data.inputs, data.concepts, params.n_ablate, exclude=exclude
        )
        return sorted(set(exclude) | set(by_attribution))

    @torch.no_grad()
    def evaluate(
        self, ctx: ClassifierContext, sae: FaithfulSAE, params: TrialParams, *, with_test: bool
    ) -> TrialResult:
        """α chosen on val (or fixed); test only reported, at that α."""
        index = self.ablated_components(ctx, sae, params)
        ablated_t = ablation.ablated_sum(sae, index)
        if params.alpha is None:
            alphas = alpha_grid(params.alpha_max, params.alpha_steps)
        else:
            alphas = [params.alpha]

        def edit(alpha: float) -> dict[str, torch.Tensor]:
            return self.layer_edit(ctx, ablated_t, alpha, params)

        sweep = [ctx.scorer.metrics("val", edit(a)) for a in alphas]
        best = pick_alpha(sweep)
        for k in range(2, params.alpha_extend + 2 if params.alpha is None else 0):
            if best != len(alphas) - 1:
                break  # the best α lies inside the grid
            longer = alpha_grid(k * params.alpha_max, k * (params.alpha_steps - 1) + 1)
            extra = longer[len(alphas) :]
            sweep += [ctx.scorer.metrics("val", edit(a)) for a in extra]
            alphas = alphas + extra
            best = pick_alpha(sweep)
        alpha = alphas[best]
        debiased = {"val": sweep[best]}
        if with_test:
            debiased["test"] = ctx.scorer.metrics("test", edit(alpha))
        models = {
            name: {s: m for s, m in per_split.items() if with_test or s != "test"}
            for name, per_split in ctx.references.items()
        }
        models["debiased"] = debiased
        best_val = sweep[best]
        return TrialResult(
            task=self.kind,
            objectives={
                "worst_group": best_val.worst_group,
                "mean_group": best_val.mean_group,
                "overall": best_val.overall,
            },
            errors=decomposition_errors(sae, self.sae_data(ctx)),
            models=models,
            edit=Edit(
                layer=ctx.layer,
                components=index,
                alpha=alpha,
                selection=params.ablate,
                alpha_curve={
                    "alphas": list(alphas),
                    "val_worst_group": [m.worst_group for m in sweep],
                    "val_mean_group": [m.mean_group for m in sweep],
                },
            ),
        )

    def edited_state_dict(
        self, ctx: ClassifierContext, sae: FaithfulSAE, params: TrialParams, result: TrialResult
    ) -> dict[str, torch.Tensor] | None:
        """The debiased model's state dict at the result's α: the base model's own keys."""
        assert result.edit is not None
        ablated_t = ablation.ablated_sum(sae, result.edit.components)
        state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        state.update(self.layer_edit(ctx, ablated_t, result.edit.alpha, params))
        return state

    def layer_edit(
        self, ctx: ClassifierContext, ablated_t: torch.Tensor, alpha: float, params: TrialParams
    ) -> dict[str, torch.Tensor]:
        """The edited layer's new tensors: W − α·Aᵀ, and with `ablate_bias` the bias moved
        by what the removed components contributed on average over probe."""
        layer = ctx.model.get_submodule(ctx.layer)
        out = {f"{ctx.layer}.weight": ablation.debiased_weight(layer.weight, ablated_t, alpha)}
        if params.ablate_bias and getattr(layer, "bias", None) is not None:
            mean_input = ctx.splits["probe"].z.mean(dim=0)
            out[f"{ctx.layer}.bias"] = ablation.compensated_bias(
                layer.bias, ablated_t, mean_input, alpha
            )
        return {k: v.detach() for k, v in out.items()}

    def model_card(self, ctx: ClassifierContext) -> dict[str, str]:
        return ctx.card

    kind: ClassVar[str]


@torch.no_grad()
def decomposition_errors(sae: FaithfulSAE, data: SAEData) -> dict[str, float]:
    """Relative faithfulness error ‖W − ΣP‖²/‖W‖² and relative reconstruction error."""
    w = data.weight_t
    faith = float((w - sae.effective_weight()).square().sum() / w.square().sum())
    recon, _, _ = sae(data.inputs)
    rec = float(
        (recon - data.targets).square().sum() / data.targets.square().sum().clamp(min=1e-12)
    )
    return {"faithfulness_error": faith, "reconstruction_error": rec}
