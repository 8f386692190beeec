"""Editing the weight: subtract the components that carry the spurious concept.

Debiased weight = W − α · Σ_{c ∈ ablated} component_c. The result is the base model's
own class with one tensor changed: same parameters, same forward code, zero overhead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from hpo.cpus import reproducible_threads
from hpo.sae.model import FaithfulSAE


def ablated_sum(
    sae: FaithfulSAE, index: list[int], fractions: list[float] | None = None
) -> torch.Tensor:
    """Σ of the chosen components (each times its fraction, if given), (in × out)."""
    e, d = sae.factors()
    e, d = e[index], d[index]
    if fractions is None:
        weights = e.new_ones(len(index))
    else:
        weights = torch.tensor(fractions, dtype=e.dtype, device=e.device)
    return weighted_sum(e, d, weights)


def weighted_sum(e: torch.Tensor, d: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_c w_c · E_c D_c (in × out) from the factors E_c [C, in, r], D_c [C, r, out]: one
    (in × C·r) @ (C·r × out) product, never the [C, in, out] components (34 GB at
    C = 1024 on a 4096 -> 2048 layer)."""
    c, d_in, r = e.shape
    scaled = (e * weights[:, None, None]).permute(1, 0, 2).reshape(d_in, c * r)
    return scaled @ d.reshape(c * r, d.shape[-1])  # also for no component: zeros


def fit_removal(
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    *,
    steps: int,
    lr: float,
    l1: float,
) -> dict[str, torch.Tensor]:
    """How much of each component to remove, fitted: r ∈ [0, 1] per component (a sigmoid,
    starting near 0) minimising `loss({layer: Σ r_c · component_c})` + l1 · mean(r).

    `factors` maps a layer to its components' factors (E_c [C, in, r], D_c [C, r, out],
    as `FaithfulSAE.factors`); the loss sees each layer's removed part in (in × out)
    layout. At α = 1 the edit only takes parts of the layer's
    own components away, never adds; α then scales it like every edit (α > 1 removes
    more than was fitted, as the seed's α sweep does).
    """
    logits = {
        layer: torch.full((e.shape[0],), INITIAL_LOGIT, device=e.device, requires_grad=True)
        for layer, (e, _) in factors.items()
    }
    opt = torch.optim.Adam(list(logits.values()), lr=lr)
    with reproducible_threads():  # its gradient sums long products: see hpo.cpus
        _fit(logits, factors, loss, opt, steps=steps, l1=l1)
    return {layer: torch.sigmoid(v).detach() for layer, v in logits.items()}


def _fit(
    logits: dict[str, torch.Tensor],
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    opt: torch.optim.Optimizer,
    *,
    steps: int,
    l1: float,
) -> None:
    total = sum(e.shape[0] for e, _ in factors.values())
    for _ in range(steps):
        fractions = {layer: torch.sigmoid(v) for layer, v in logits.items()}
        removed = {layer: weighted_sum(e, d, fractions[layer]) for layer, (e, d) in factors.items()}
        value = loss(removed) + l1 * sum(f.sum() for f in fractions.values()) / total
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()


INITIAL_LOGIT = -6.0  # sigmoid(-6) ≈ 0.0025: the fit starts from (almost) no removal


def debiased_weight(weight: torch.Tensor, ablated_t: torch.Tensor, alpha: float) -> torch.Tensor:
    """W − α·A for a torch Linear weight W (out × in) and A in (in × out) layout."""
    return weight - alpha * ablated_t.T


def compensated_bias(
    bias: torch.Tensor, ablated_t: torch.Tensor, mean_input: torch.Tensor, alpha: float
) -> torch.Tensor:
    """b + α·(μ·A): the removed components' average contribution stays in the output, so
    the edit removes how the output varies with them, not its mean (LEACE's affine part)."""
    return bias + alpha * (mean_input @ ablated_t)


def conditioned_components(n_latents: int) -> list[int]:
    """The first latents were trained to fire for the concepts (SCAR): k per concept."""
    return list(range(n_latents))


@torch.no_grad()
def attribution_scores(
    sae: FaithfulSAE, inputs: torch.Tensor, concepts: torch.Tensor
) -> torch.Tensor:
    """How much each component's contribution differs between a concept and its absence,
    [C]. Contribution of component c on input x is ‖x·E_c‖·‖D_c‖: what removing it from
    the weight takes away. Score = max over concepts of |mean with − mean without|."""
    e, d = sae.factors()
    act = torch.einsum("ni,cir->ncr", inputs, e).norm(dim=2) * d.flatten(1).norm(dim=1)
    scores = torch.zeros(act.shape[1], device=act.device)
    for j in range(concepts.shape[1]):
        on = concepts[:, j] > 0.5
        if on.any() and (~on).any():
            gap = (act[on].mean(0) - act[~on].mean(0)).abs()
            scores = torch.maximum(scores, gap)
    return scores


def attribution_components(
    sae: FaithfulSAE,
    inputs: torch.Tensor,
    concepts: torch.Tensor,
    m: int,
    exclude: list[int] | None = None,
) -> list[int]:
    """The m components with the largest `attribution_scores`, none of `exclude`."""
    scores = attribution_scores(sae, inputs, concepts)
    if exclude:
        scores[exclude] = -1.0  # already chosen: pick m others
    return scores.topk(min(m, scores.numel())).indices.sort().values.tolist()
