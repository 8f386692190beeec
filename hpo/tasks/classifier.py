"""Debiasing a classifier by editing its linear layers: what colored MNIST and user tasks share.

A classifier task hands over a `UserTask` (a trained model, the layer, probe/val/test)
and, if it can, an oracle. From there everything is common: hpo.tasks.bundle caches the
layer's inputs on every split and scores the references once; `evaluate` here scores a
Faithful-SAE ablation in one layer or several (`params.layers`), choosing α on
validation and reporting test only at that α.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hpo.config import TrialParams
from hpo.cpus import reproducible_threads
from hpo.debias import ablation
from hpo.debias.scoring import alpha_grid, pick_alpha
from hpo.errors import UserError
from hpo.results import Edit, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData
from hpo.tasks.base import Direction, Saes, TaskConfig
from hpo.tasks.bundle import ClassifierContext

OBJECTIVES: dict[str, Direction] = {
    "worst_group": "maximize",
    "mean_group": "maximize",
    "overall": "maximize",
    "faithfulness_error": "minimize",
    "reconstruction_error": "minimize",
    "prediction_change": "minimize",
}


class ClassifierTask:
    """The scoring half of every classifier task; subclasses build and load bundles."""

    objectives: ClassVar[Mapping[str, Direction]] = OBJECTIVES
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
        """Probe-split inputs of `layer`, its pre-activations (bias excluded), concepts."""
        probe = ctx.splits["probe"]
        inputs = ctx.probe_inputs[layer]
        weight_t = ctx.weight_of(layer).detach().T.contiguous()
        assert probe.concepts is not None
        concepts = torch.nn.functional.one_hot(probe.concepts, len(ctx.concept_names)).float()
        return SAEData(
            inputs=inputs, targets=inputs @ weight_t, weight_t=weight_t, concepts=concepts
        )

    def ablated_components(
        self, ctx: ClassifierContext, layer: str, sae: FaithfulSAE, params: TrialParams
    ) -> list[int]:
        """The components removed in full (every mode but "fitted")."""
        conditioned = ablation.conditioned_components(
            len(ctx.concept_names) * params.concept_latents
        )
        if params.ablate == "conditioned":
            return conditioned
        data = self.sae_data(ctx, layer)
        exclude = conditioned if params.ablate == "both" else []
        by_attribution = ablation.attribution_components(
            sae, data.inputs, data.concepts, params.n_ablate, exclude=exclude
        )
        return sorted(set(exclude) | set(by_attribution))

    def removal(
        self, ctx: ClassifierContext, saes: Saes, params: TrialParams
    ) -> dict[str, Removal]:
        """Per layer, which components go and how much of each (None: all of it)."""
        if params.ablate != "fitted":
            return {
                layer: Removal(self.ablated_components(ctx, layer, sae, params), None)
                for layer, sae in saes.items()
            }
        components = {layer: sae.components().detach() for layer, sae in saes.items()}
        loss = balanced_probe_loss(ctx, lambda removed: self.model_edit(ctx, removed, 1.0, params))
        # one thread: the fit's gradient sums C×in×out products (cpus.reproducible_threads)
        with torch.enable_grad(), reproducible_threads():
            fitted = ablation.fit_removal(
                components, loss, steps=params.fit_steps, lr=params.fit_lr, l1=params.removal_l1
            )
        return {layer: Removal.from_fractions(f) for layer, f in fitted.items()}

    @torch.no_grad()
    def evaluate(
        self,
        ctx: ClassifierContext,
        saes: Saes,
        params: TrialParams,
        *,
        with_test: bool,
        removal: Mapping[str, Removal] | None = None,
    ) -> TrialResult:
        """α chosen on val (or fixed), the same in every edited layer; test only reported,
        at that α. `removal`: one recorded earlier (a stored trial's), applied as it was
        instead of being chosen (or fitted) again."""
        removal = dict(removal) if removal is not None else self.removal(ctx, saes, params)
        ablated = {layer: r.ablated_sum(saes[layer]) for layer, r in removal.items()}
        if params.alpha is None:
            alphas = alpha_grid(params.alpha_max, params.alpha_steps)
        else:
            alphas = [params.alpha]

        def edit(alpha: float) -> dict[str, torch.Tensor]:
            return self.model_edit(ctx, ablated, alpha, params)

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
            edit=Edit(
                layer="+".join(saes),
                components={layer: r.components for layer, r in removal.items()},
                fractions=recorded_fractions(removal),
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
                mean_input = ctx.probe_inputs[name].mean(dim=0)
                out[f"{name}.bias"] = ablation.compensated_bias(
                    layer.bias.detach(), ablated_t, mean_input, alpha
                )
        return out

    def model_card(self, ctx: ClassifierContext) -> dict[str, str]:
        return ctx.card

    kind: ClassVar[str]


MIN_FRACTION = 0.01  # a fitted removal under 1% of a component is no removal


@dataclass(frozen=True)
class Removal:
    """One layer's removal: the components, and the fraction of each (None: all of it)."""

    components: list[int]
    fractions: list[float] | None

    @classmethod
    def from_fractions(cls, fitted: torch.Tensor) -> Removal:
        """Fitted fractions, rounded to 3 decimals (what is recorded is what is scored);
        components under MIN_FRACTION are left whole."""
        rounded = [round(f, 3) for f in fitted.tolist()]
        keep = [i for i, f in enumerate(rounded) if f >= MIN_FRACTION]
        return cls(keep, [rounded[i] for i in keep])

    def ablated_sum(self, sae: FaithfulSAE) -> torch.Tensor:
        return ablation.ablated_sum(sae, self.components, self.fractions)

    def to_json(self) -> dict[str, Any]:
        return {"components": list(self.components), "fractions": self.fractions}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Removal:
        fractions = d.get("fractions")
        return cls(
            [int(c) for c in d["components"]], None if fractions is None else list(fractions)
        )


def recorded_fractions(removal: Mapping[str, Removal]) -> dict[str, list[float]] | None:
    """What an Edit records of a removal: the fractions per layer, None when whole
    components went (every mode but "fitted")."""
    if all(r.fractions is None for r in removal.values()):
        return None
    return {layer: r.fractions or [] for layer, r in removal.items()}


def recorded_removal(edit: Edit) -> dict[str, Removal]:
    """The removal an edit made, per layer: what a stored trial re-applies."""
    fractions = edit.fractions or {}
    return {layer: Removal(list(c), fractions.get(layer)) for layer, c in edit.components.items()}


def balanced_probe_loss(
    ctx: ClassifierContext,
    edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """removed parts -> cross-entropy on probe with every group weighted equally (the
    balanced split's groups, as DFR balances them): what a fitted removal minimises."""
    probe = ctx.splits["probe"]
    sizes = torch.bincount(probe.groups, minlength=len(ctx.group_names)).double()
    weights = (1.0 / sizes.clamp(min=1))[probe.groups]
    weights = (weights / weights.sum()).to(torch.get_default_dtype())

    def loss(removed: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = ctx.scorer.forward("probe", edit(removed))
        return (F.cross_entropy(logits, probe.y, reduction="none") * weights).sum()

    return loss


def prediction_change(ctx: ClassifierContext, saes: Saes) -> float:
    """The share of validation predictions that change when each decomposed weight is
    replaced by the sum of its components: what a faithfulness error means for the model
    (0: the components are the layer, as far as its decisions go)."""
    summed = {f"{layer}.weight": sae.effective_weight().T for layer, sae in saes.items()}
    before = ctx.scorer.logits("val").argmax(-1)
    after = ctx.scorer.logits("val", summed).argmax(-1)
    return float((before != after).double().mean())


def worst_errors(per_layer: list[dict[str, float]]) -> dict[str, float]:
    """The largest of each error over the decomposed layers: a constraint on the
    faithfulness error holds for every layer."""
    return {key: max(e[key] for e in per_layer) for key in per_layer[0]}


@torch.no_grad()
@reproducible_threads()
def decomposition_errors(sae: FaithfulSAE, data: SAEData) -> dict[str, float]:
    """Relative faithfulness error ‖W − ΣP‖²/‖W‖² and relative reconstruction error.
    One thread: a sum over more than 32768 numbers is added in one part per thread."""
    w = data.weight_t
    faith = float((w - sae.effective_weight()).square().sum() / w.square().sum())
    recon, _, _ = sae(data.inputs)
    rec = float(
        (recon - data.targets).square().sum() / data.targets.square().sum().clamp(min=1e-12)
    )
    return {"faithfulness_error": faith, "reconstruction_error": rec}
