"""The Faithful-SAE's training loss, term by term: what one step computes and weighs.

`loss_terms` returns one step's losses by name (the `LOSSES` registry, in the order they
are computed, summed and logged); `loss_weights` gives each its weight at a step, read
from its `LossWeights` field. A new loss is one registry entry here and its weight field
in hpo.params.LossWeights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hpo.params import LossWeights, SAEConfig
from hpo.registry import Registry
from hpo.sae import losses
from hpo.sae.model import FaithfulSAE, TopK


@dataclass(frozen=True)
class Step:
    """What a loss may read in one training step: the batch and the SAE's forward pass."""

    sae: FaithfulSAE
    pre: torch.Tensor  # [B, latents]: pre-activations
    kept: TopK | None  # the top-k latents in compact form (values, indices); None: dense
    recon: torch.Tensor  # [B, out]: the reconstruction
    target: torch.Tensor
    concepts: torch.Tensor
    weight_t: torch.Tensor
    params: SAEConfig
    zero: torch.Tensor  # what a term that is not computed reports
    probes: torch.Tensor | None = None  # [out, s]: sketch the faithfulness loss (None: exact)
    anchor: losses.Anchor | None = None  # the sketch's control variate


@dataclass(frozen=True)
class Loss:
    """One term of the training loss: how to compute it and which LossWeights field
    weighs it. `always`: computed (and logged) even at weight zero; else skipped then.
    `ramp`: whether the config grows the weight quadratically over training."""

    term: Callable[[Step], torch.Tensor]
    weight: Callable[[LossWeights], float]
    always: bool = False
    ramp: Callable[[SAEConfig], bool] | None = None


def _conditioning(s: Step) -> torch.Tensor:
    return losses.conditioning(s.pre, s.concepts, s.sae.rank) if s.concepts.shape[1] else s.zero


def _faithful(s: Step) -> torch.Tensor:
    if s.probes is None:
        return losses.faithfulness(s.sae.effective_weight(), s.weight_t)
    return losses.faithfulness_sketch(s.sae.encoder, s.sae.decoder, s.weight_t, s.probes, s.anchor)


def _sparsity(s: Step) -> torch.Tensor:
    norms = s.sae.decoder.norm(dim=1) if s.params.sparsity_decoder_norm else None
    return losses.sparsity(s.pre, norms)


def _decorrelation(s: Step) -> torch.Tensor:
    if s.kept is None:
        return losses.decorrelation(s.pre)
    return losses.decorrelation_topk(s.kept.values, s.kept.indices, s.sae.n_latents)


# The training loss, by name, in the order the terms are computed, summed and logged. A
# new loss is one entry here (and its weight field in hpo.config.LossWeights).
LOSSES: Registry[Loss] = Registry("loss")
LOSSES.register(
    "recon",
    Loss(lambda s: losses.reconstruction(s.recon, s.target), lambda w: w.recon_weight, always=True),
)
LOSSES.register(
    "faithful",
    Loss(_faithful, lambda w: w.faithful_weight, always=True, ramp=lambda c: c.faithful_ramp),
)
LOSSES.register(
    "rank",
    Loss(
        lambda s: losses.schatten_rank(*s.sae.factors(), p=s.params.schatten_p),
        lambda w: w.rank_weight,
    ),
)
LOSSES.register("cond", Loss(_conditioning, lambda w: w.cond_weight))
LOSSES.register("sparsity", Loss(_sparsity, lambda w: w.sparsity_weight))
LOSSES.register("decorr", Loss(_decorrelation, lambda w: w.decorr_weight))
LOSS_NAMES = LOSSES.names()


def loss_weights(params: SAEConfig, step: int) -> dict[str, float]:
    """Each loss's weight at `step`, from its LossWeights field (see LOSSES)."""
    weights = {}
    for name, loss in LOSSES.items():
        weight = loss.weight(params)
        if loss.ramp is not None and loss.ramp(params):
            weight *= losses.quadratic_ramp(step, params.steps)
        weights[name] = weight
    return weights


def loss_terms(
    sae: FaithfulSAE,
    x: torch.Tensor,
    target: torch.Tensor,
    concepts: torch.Tensor,
    weight_t: torch.Tensor,
    params: SAEConfig,
    weights: dict[str, float],
    probes: torch.Tensor | None = None,
    anchor: losses.Anchor | None = None,
) -> dict[str, torch.Tensor]:
    """One step's losses by name. Terms whose weight is zero are not computed. `probes`
    [out, s]: the faithfulness loss is sketched with them (None: exact), and with the
    `anchor`'s control variate if given.

    The top-k latents stay in compact form (values, indices), from which decoding and the
    decorrelation loss work (see `FaithfulSAE.decode`, `losses.decorrelation_topk`). The
    values are those of `sae(x)` and `losses.decorrelation` up to float rounding.
    """
    pre = sae.pre_activations(x)
    kept = sae.select(pre)
    recon = pre @ sae.decoder if kept is None else sae.decode(kept)
    step = Step(
        sae, pre, kept, recon, target, concepts, weight_t, params, x.new_zeros(()), probes, anchor
    )
    return {
        name: loss.term(step) if loss.always or weights[name] else step.zero
        for name, loss in LOSSES.items()
    }
