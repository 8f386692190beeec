"""The `neurons` control: the layer's weight split by input unit, one rank-1 component
per unit (E_c = e_c, D_c = the unit's outgoing weights), summing to the weight exactly:
the basis an interpretability analysis starts from when it reads neurons."""

from __future__ import annotations

import torch

from hpo.debias.controls.base import Control
from hpo.params import SAEConfig
from hpo.sae.model import FaithfulSAE


@torch.no_grad()
def input_units(weight_t: torch.Tensor, params: SAEConfig) -> FaithfulSAE:
    """One component per input unit c of the (in × out) weight: e_c ⊗ W[c, :]."""
    d_in, d_out = weight_t.shape
    sae = FaithfulSAE(d_in, d_out, d_in, min(params.top_k, d_in), rank=1)
    sae.encoder.copy_(torch.eye(d_in, dtype=weight_t.dtype))
    sae.decoder.copy_(weight_t)
    return sae.to(weight_t.device).eval()


NEURONS = Control(input_units, ("top_k",))
