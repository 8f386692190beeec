"""The Faithful-SAE loss terms, as pure functions of tensors.

Each returns a scalar; the trainer weighs them and returns them by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE to the layer's pre-activation (without its bias, which is not decomposed)."""
    return F.mse_loss(pred, target)


def faithfulness(effective_weight: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """MSE between Σ components and the layer's weight (both in × out)."""
    return F.mse_loss(effective_weight, weight_t)


def quadratic_ramp(step: int, steps: int) -> float:
    """The seed's schedule for the faithfulness weight: (step / steps)²."""
    return (step / max(1, steps)) ** 2


def schatten_rank(e: torch.Tensor, d: torch.Tensor, p: float, eps: float = 1e-12) -> torch.Tensor:
    """APD's simplicity loss: mean over components of ‖E_c D_c‖_p^p (Schatten-p).

    Factored form, never building the in × out matrices: for rank 1 the only singular
    value is ‖e‖·‖d‖; for rank r it is the singular values of R_E R_Dᵀ (r × r), from the
    QR factors of E_c and D_cᵀ.
    """
    if e.shape[-1] == 1:
        sv = (e.square().sum(dim=(1, 2)) + eps).sqrt() * (d.square().sum(dim=(1, 2)) + eps).sqrt()
        return sv.pow(p).mean()
    r_e = torch.linalg.qr(e).R  # [C, r, r]
    r_d = torch.linalg.qr(d.transpose(1, 2)).R
    sv = torch.linalg.svdvals(r_e @ r_d.transpose(1, 2))
    return (sv + eps).pow(p).sum(dim=1).mean()


def conditioning(pre: torch.Tensor, concepts: torch.Tensor, rank: int = 1) -> torch.Tensor:
    """SCAR: latent j (pre-top-k) is the logit of concept j, for the first m components."""
    m = concepts.shape[1]
    logits = pre[:, : m * rank : rank]
    return F.binary_cross_entropy_with_logits(logits, concepts)


def sparsity(pre: torch.Tensor) -> torch.Tensor:
    """L1 of the latents before top-k (after top-k they are sparse by construction)."""
    return pre.abs().mean()


def decorrelation(latents: torch.Tensor) -> torch.Tensor:
    """Σ of squared off-diagonal covariances of the latents, divided by their number.

    ‖Cov‖_F² is computed from the smaller Gram matrix (B × B when the batch is smaller
    than the latent count), which halves the cost at the seed's C = 1024, B = 512.
    """
    b, c = latents.shape
    if b < 2:
        return latents.new_zeros(())
    centered = latents - latents.mean(dim=0, keepdim=True)
    gram = centered @ centered.T if b < c else centered.T @ centered
    total = gram.square().sum() / (b - 1) ** 2
    diag = centered.square().sum(dim=0) / (b - 1)
    return (total - diag.square().sum()) / c
