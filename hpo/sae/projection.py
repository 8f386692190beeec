"""Make a trained decomposition sum to its layer: the smallest change to the factors that
closes W − E·D, so that the components explain the layer's decisions as well as its weight.

Training trades faithfulness against reconstruction through the top-k latents; even a
small relative error in ‖W − E·D‖² changes a share of a model's validation predictions
when the layer is replaced by the sum of its components (`prediction_change`; BENCHMARKS.md,
"The threshold", relates the two).
The projection keeps what training found (which latents fire, what each component points
at) and removes what is left of the error by regularised least squares, each factor pulled
towards its trained value:

    D ← argmin ‖W − E·D‖² + λ‖D − D₀‖²    E ← argmin ‖W − E·D‖² + λ‖E − E₀‖²

With λ small the D step is D₀ + E⁺(W − E·D₀), the least change to the decoder that closes
the gap; it closes it alone where E spans the layer's inputs (in ≤ C·r), and the E steps
close what a narrower encoder cannot.
"""

from __future__ import annotations

import torch

from hpo.cpus import reproducible_threads
from hpo.sae.model import FaithfulSAE

ROUNDS = 3  # D, E, D, E, … steps: one D step is exact up to the ridge where in ≤ C·r
RIDGE = 1e-6  # λ relative to the mean eigenvalue of the factor's Gram matrix


@torch.no_grad()
@reproducible_threads()  # solves sum long products: see hpo.cpus
def project_to_weight(
    sae: FaithfulSAE, weight_t: torch.Tensor, *, rounds: int = ROUNDS, ridge: float = RIDGE
) -> None:
    """Move `sae`'s factors (in place) so that E·D = W (`weight_t`, in × out) as nearly
    as the ridge allows."""
    w = weight_t.double()
    e0, d0 = sae.encoder.double(), sae.decoder.double()
    e, d = e0, d0
    for _ in range(rounds):
        d = ridge_step(e, w, d0, ridge)
        e = ridge_step(d.T, w.T, e0.T, ridge).T
    sae.encoder.copy_(e.to(sae.encoder.dtype))
    sae.decoder.copy_(d.to(sae.decoder.dtype))


def ridge_step(a: torch.Tensor, w: torch.Tensor, x0: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_X ‖W − A·X‖² + λ‖X − X₀‖² = X₀ + (AᵀA + λI)⁻¹ Aᵀ(W − A·X₀), with λ = ridge
    × the mean eigenvalue of AᵀA (float64)."""
    gram = a.T @ a
    lam = ridge * float(gram.diagonal().mean().clamp(min=1e-30))
    gram.diagonal().add_(lam)
    step: torch.Tensor = torch.linalg.solve(gram, a.T @ (w - a @ x0))
    return x0 + step
