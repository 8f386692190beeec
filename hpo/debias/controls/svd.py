"""The `svd` control: the weight's singular vectors, min(in, out) exact rank-1 components:
the decomposition a linear-algebra textbook gives for free."""

from __future__ import annotations

import torch

from hpo.cpus import reproducible_threads
from hpo.debias.controls.base import Control
from hpo.params import SAEConfig
from hpo.sae.model import FaithfulSAE


@torch.no_grad()
def singular_vectors(weight_t: torch.Tensor, params: SAEConfig) -> FaithfulSAE:
    """W = Σ σ_i u_i v_iᵀ as rank-1 components E_i = √σ_i u_i, D_i = √σ_i v_iᵀ, largest
    first (so "the first latents" are the largest directions)."""
    with reproducible_threads():  # LAPACK splits its sums by thread count: see hpo.cpus
        u, s, vh = torch.linalg.svd(weight_t.double(), full_matrices=False)
    n = s.numel()
    sae = FaithfulSAE(weight_t.shape[0], weight_t.shape[1], n, min(params.top_k, n), rank=1)
    root = s.sqrt()
    sae.encoder.copy_((u * root).to(weight_t.dtype))
    sae.decoder.copy_((root[:, None] * vh).to(weight_t.dtype))
    return sae.to(weight_t.device).eval()


SVD = Control(singular_vectors, ("top_k",))
