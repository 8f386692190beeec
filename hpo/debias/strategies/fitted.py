"""Remove a fraction of every component, fitted on probe by group-balanced cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from hpo.debias import ablation
from hpo.debias.strategies.base import EditSource, within_budget
from hpo.params import EditConfig
from hpo.plans import Labels, Removal
from hpo.sae.model import FaithfulSAE


class Fitted:
    name: ClassVar[str] = "fitted"
    labels: ClassVar[Labels] = "group"

    def select(self, source: EditSource) -> dict[str, Removal]:
        loss = source.require_group_loss(self.name)
        return fit_within_budget(source, loss, bias_moves(source.config, list(source.saes)))

    def describe(self, config: EditConfig, concept_names: Sequence[str]) -> str:
        how = (
            "at α = 1 it only takes parts of the weight away"
            if config.amplify == 0
            else f"a negative fraction, down to −{config.amplify:g}, amplifies its component"
        )
        bias = BIAS_WORDS[config.fit_bias]
        return (
            "a fraction of each component, fitted on the balanced probe split by "
            f"group-balanced cross-entropy ({how}){bias}"
        )


BIAS_WORDS = {
    "off": "",
    "components": ", with a bias move along each kept component's output direction",
    "layers": ", with a fitted move of each edited layer's bias",
    "first": ", with a fitted move of the first edited layer's bias",
}


def bias_moves(config: EditConfig, layers: list[str]) -> dict[str, ablation.Shift]:
    """Which layers' biases a fit may move, and how (`EditConfig.fit_bias`)."""
    if config.fit_bias == "off":
        return {}
    if config.fit_bias == "components":
        return {layer: "components" for layer in layers}
    if config.fit_bias == "layers":
        return {layer: "free" for layer in layers}
    return {layers[0]: "free"}


def fit_within_budget(
    source: EditSource, loss: ablation.EditLoss, shifts: dict[str, ablation.Shift]
) -> dict[str, Removal]:
    """A fraction of every component (and the bias moves `shifts` allows), fitted to
    minimise `loss`; over budget, keep the components whose fitted change is largest
    (|fraction| × ‖E_c D_c‖) and refit those alone, so that the kept ones make up for
    the dropped ones. The refit has no L1 term: the budget is its sparsity (an L1 on the
    mean over a few kept components would weigh each of them C / budget times more than
    in the first fit)."""
    everything = {layer: list(range(sae.n_components)) for layer, sae in source.saes.items()}
    removal = _first_fit(source, everything, loss, shifts)
    total = sum(len(r.components) for r in removal.values())
    if source.budget is None or total <= source.budget:
        return removal
    sizes = {}
    for layer, sae in source.saes.items():
        norms = component_norms(sae)
        fraction = torch.zeros_like(norms)
        fraction[removal[layer].components] = torch.tensor(
            removal[layer].fractions or [], dtype=norms.dtype, device=norms.device
        )
        sizes[layer] = fraction.abs() * norms
    kept = within_budget(removal, sizes, source.budget)
    which = {layer: r.components for layer, r in kept.items()}
    return fit_fractions(source, which, loss, shifts, l1=0.0)


def _first_fit(
    source: EditSource,
    everything: dict[str, list[int]],
    loss: ablation.EditLoss,
    shifts: dict[str, ablation.Shift],
) -> dict[str, Removal]:
    """The unbudgeted fit, shared through `source.memo` by plans that differ only in
    their budget (the loss is the strategy's, which the config and the shifts fix)."""
    if source.memo is None:
        return fit_fractions(source, everything, loss, shifts)
    unbudgeted = source.config.model_copy(update={"max_components": None})
    key = f"first fit {unbudgeted.model_dump_json()} {sorted(shifts.items())}"
    if key not in source.memo:
        source.memo[key] = fit_fractions(source, everything, loss, shifts)
    removal: dict[str, Removal] = source.memo[key]
    return removal


def fit_fractions(
    source: EditSource,
    which: dict[str, list[int]],
    loss: ablation.EditLoss,
    shifts: dict[str, ablation.Shift],
    l1: float | None = None,
) -> dict[str, Removal]:
    """Fractions of the components in `which` and the bias moves, fitted together
    (`ablation.fit_removal`), with `l1` (default: `config.removal_l1`)."""
    config = source.config
    factors = {}  # E_c, D_c of the components in `which`: never [C, in, out]
    for layer, idx in which.items():
        e, d = source.saes[layer].factors()
        factors[layer] = (e[idx].detach(), d[idx].detach())
    with torch.enable_grad():
        fitted = ablation.fit_removal(
            factors,
            loss,
            steps=config.fit_steps,
            lr=config.fit_lr,
            l1=config.removal_l1 if l1 is None else l1,
            low=-config.amplify,
            shifts=shifts,
        )
    out = {}
    for layer, fractions in fitted.fractions.items():
        shift = fitted.shifts.get(layer)
        r = Removal.from_fractions(
            fractions.tolist(),
            # a component the bias moves along is edited, whatever its fraction
            keep_all=shifts.get(layer) == "components",
            bias_shift=None if shift is None else [round(b, 6) for b in shift.tolist()],
        )
        out[layer] = Removal([which[layer][i] for i in r.components], r.fractions, r.bias_shift)
    return out


@torch.no_grad()
def component_norms(sae: FaithfulSAE) -> torch.Tensor:
    """‖E_c D_c‖_F of every component, [C], from r × r Gram matrices (never [C, in, out]):
    ‖E_c D_c‖² = Σ (E_cᵀE_c) ∘ (D_c D_cᵀ)."""
    e, d = sae.factors()
    gram_e = e.transpose(1, 2) @ e
    gram_d = d @ d.transpose(1, 2)
    return (gram_e * gram_d).sum(dim=(1, 2)).clamp(min=0).sqrt()
