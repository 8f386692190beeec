"""Editing the weight: subtract the components that carry the spurious concept.

Debiased weight = W − α · Σ_{c ∈ ablated} component_c. The result is the base model's
own class with one tensor changed: same parameters, same forward code, zero overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

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


# (removed parts {layer: (in × out)}, bias moves {layer: [out]}) -> a loss on probe of
# the model edited by them
EditLoss = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]
# How a fit may move a layer's bias: "components", along each fitted component's output
# direction (Σ_c s_c D_c, one number per rank of each); "free", any move.
Shift = Literal["components", "free"]


@dataclass(frozen=True)
class FittedEdit:
    """A fitted edit: per layer the fraction of each component, and the bias moves."""

    fractions: dict[str, torch.Tensor]  # layer -> [C]
    shifts: dict[str, torch.Tensor]  # layer -> [out]; only the layers whose bias moves


def fit_removal(
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    loss: EditLoss,
    *,
    steps: int,
    lr: float,
    l1: float,
    low: float = 0.0,
    shifts: Mapping[str, Shift] | None = None,
) -> FittedEdit:
    """How much of each component to remove, fitted: r ∈ [low, 1] per component (a
    sigmoid, starting at (almost) no change) minimising `loss` + l1 · mean |r|; a
    negative r amplifies its component. `shifts` names the layers whose bias the fit
    may move too, and how.

    `factors` maps a layer to its components' factors (E_c [C, in, r], D_c [C, r, out],
    as `FaithfulSAE.factors`); the loss sees each layer's removed part in (in × out)
    layout and each moved layer's bias move. At α = 1 with low = 0 the edit only takes
    parts of the layer's own components away, never adds; α then scales it like every
    edit (α > 1 removes more than was fitted, as the seed's α sweep does).
    """
    fit = _Fit(factors, dict(shifts or {}), low)
    opt = torch.optim.Adam(fit.parameters(), lr=lr)
    with reproducible_threads():  # its gradient sums long products: see hpo.cpus
        for _ in range(steps):
            fractions = fit.fractions()
            removed = {
                layer: weighted_sum(e, d, fractions[layer]) for layer, (e, d) in factors.items()
            }
            value = loss(removed, fit.shifts()) + l1 * fit.size(fractions) / fit.total
            opt.zero_grad(set_to_none=True)
            value.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
            opt.step()
    with torch.no_grad():
        return FittedEdit(
            {k: v.detach() for k, v in fit.fractions().items()},
            {k: v.detach() for k, v in fit.shifts().items()},
        )


class _Fit:
    """The parameters of a fit (a logit per component, the bias moves), and what they
    stand for."""

    def __init__(
        self,
        factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        kinds: dict[str, Shift],
        low: float,
    ) -> None:
        self.factors, self.kinds, self.low = factors, kinds, low
        # r(start) ≈ 0: sigmoid(-6) ≈ 0.0025 for removal only, exactly 0 for a signed range
        start = INITIAL_LOGIT if low == 0 else math.log(-low)
        self.logits = {
            layer: torch.full((e.shape[0],), start, device=e.device, requires_grad=True)
            for layer, (e, _) in factors.items()
        }
        self.moves = {}
        for layer, kind in kinds.items():
            e, d = factors[layer]
            shape = (d.shape[0], d.shape[1]) if kind == "components" else (d.shape[2],)
            self.moves[layer] = torch.zeros(shape, device=e.device, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.logits.values(), *self.moves.values()]

    def fractions(self) -> dict[str, torch.Tensor]:
        if self.low == 0:
            return {layer: torch.sigmoid(v) for layer, v in self.logits.items()}
        return {
            layer: self.low + (1 - self.low) * torch.sigmoid(v) for layer, v in self.logits.items()
        }

    def shifts(self) -> dict[str, torch.Tensor]:
        out = {}
        for layer, move in self.moves.items():
            if self.kinds[layer] == "components":  # Σ_c s_c · D_c: [C, r] · [C, r, out]
                out[layer] = torch.einsum("cr,cro->o", move, self.factors[layer][1])
            else:
                out[layer] = move
        return out

    @property
    def total(self) -> int:
        """How many components the fit weighs, over every layer."""
        return sum(e.shape[0] for e, _ in self.factors.values())

    def size(self, fractions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ |r| over every component of every layer."""
        if self.low == 0:  # r ≥ 0
            return sum(f.sum() for f in fractions.values())  # type: ignore[return-value]
        return sum(f.abs().sum() for f in fractions.values())  # type: ignore[return-value]


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
