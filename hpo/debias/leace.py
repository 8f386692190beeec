"""LEACE's eraser from its fitted statistics, without dense d×d temporaries.

concept-erasure's `LeaceFitter.eraser` forms a dozen dense d×d float64 matrices (W and
its inverse, P, Q, P·Σ·Pᵀ, a full SVD of I − P with its workspace, the shrunk covariance
twice). Each of them is the
identity plus a rank-k term, or a product that only thin d×k matrices need. Here the same
algorithm keeps the covariance and its eigenvectors (`torch.linalg.eigh`) as its only
d×d matrices and applies the whitening as V·diag·(Vᵀ·X) to thin X, and shrinks the
covariance in one matrix (`shrunk_covariance`; the library's `sigma_xx` builds ~7 d×d
temporaries). `bench/leace_memory.py` measures both peaks (BENCHMARKS.md, "Big layers").

The result is the eraser x ↦ x − (x − bias)·(left·right)ᵀ with `left·right` equal to the
library's `proj_left @ proj_right` up to rounding, but in its `constrain_cov_trace` branch:

* In exact arithmetic LEACE never raises the covariance's trace: with L = W⁺u and
  R = uᵀW, P·Σ·Pᵀ = Σ − L·Lᵀ, so tr(P·Σ·Pᵀ) = tr(Σ) − ‖L‖². The library's dense
  tr(P·Σ·Pᵀ) still exceeds tr(Σ) when its rounding outweighs ‖L‖², which takes a
  covariance conditioned near the eigenvalue mask's limit (κ ≈ 1/(d·eps)). The change
  of the trace is summed here on its own, in low-rank form, so for LEACE's own factors
  the branch is not taken; there the library's mixture is within rounding of the unmixed
  eraser (and, where P and Q agree to rounding, its α is 0/0 and its SVD fails). The
  branch is kept, as the library computes it, for a projection that does raise the trace.
* When the library does take that branch, it factors I − P' by a full SVD as
  `u * s.sqrt()` and `vh * s.sqrt()`: the second scales vh's columns, not its rows, so
  its `proj_left @ proj_right` is not I − P' (concept-erasure 0.2.4). Here the factors'
  product is I − P', the matrix its `LeaceEraser` documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class LeaceStatistics(Protocol):
    """What is read from a `concept_erasure.LeaceFitter`: its statistics (the running
    sums, their count, the cross-covariance) and settings."""

    method: str
    affine: bool
    constrain_cov_trace: bool
    svd_tol: float
    shrinkage: bool
    mean_x: Tensor
    n: Tensor
    sigma_xx_: Tensor  # the running sum of outer products of the centred rows

    @property
    def sigma_xz(self) -> Tensor: ...


@dataclass(frozen=True)
class LowRankEraser:
    """x ↦ x − (x − bias)·(left·right)ᵀ: `left` is d×r, `right` r×d (r ≤ 2k for k
    concept dimensions), `bias` the mean of x when the eraser is affine."""

    left: Tensor
    right: Tensor
    bias: Tensor | None


def leace_eraser(fitter: LeaceStatistics) -> LowRankEraser:
    """The eraser `fitter.eraser` would give, as thin factors, from the fitter's
    statistics: its LEACE projection I − left·right and its bias."""
    if fitter.method != "leace":
        raise ValueError(f"only LEACE's eraser is computed here, not {fitter.method!r}")
    left, right = leace_factors(
        shrunk_covariance(fitter),
        fitter.sigma_xz,
        svd_tol=fitter.svd_tol,
        constrain_cov_trace=fitter.constrain_cov_trace,
    )
    return LowRankEraser(left, right, fitter.mean_x if fitter.affine else None)


def shrunk_covariance(fitter: LeaceStatistics) -> Tensor:
    """`fitter.sigma_xx` in one d×d tensor: the symmetrised sum of outer products over
    n, shrunk towards tr(S)/d·I by the library's `optimal_linear_shrinkage` (or over
    n − 1 without shrinkage), in place of its ~7 d×d temporaries. With σ₀ = tr(S)/d·I,
    ‖σ₀‖² = tr(σ₀S) = tr(S)²/d, so α and β need only tr(S) and ‖S‖."""
    total = fitter.sigma_xx_
    n = float(fitter.n)
    cov = total.clone().add_(total.mH).div_(2 * (n if fitter.shrinkage else n - 1))
    if not fitter.shrinkage:
        return cov
    d = cov.shape[-1]
    eps = torch.finfo(cov.dtype).eps
    tr = torch.trace(cov)
    sigma0_norm_sq = tr * tr / d  # ‖σ₀‖², and tr(S·σ₀) too
    top = tr * tr * sigma0_norm_sq / n
    bottom = torch.linalg.matrix_norm(cov).square() * sigma0_norm_sq - sigma0_norm_sq.square()
    alpha = 1 - (top + eps) / (bottom + eps)
    cov.mul_(alpha).diagonal().add_((1 - alpha) * tr / d)  # β = 1 − α: tr(S·σ₀) = ‖σ₀‖²
    return cov


def leace_factors(
    sigma_xx: Tensor, sigma_xz: Tensor, *, svd_tol: float, constrain_cov_trace: bool
) -> tuple[Tensor, Tensor]:
    """(left, right), d×r and r×d, with I − left·right the LEACE projection for the
    covariance `sigma_xx` (d×d, symmetric) and cross-covariance `sigma_xz` (d×k).

    The library's steps: W = Σ^(-1/2) and W⁺ = Σ^(1/2) over the eigenvalues above
    pinv's threshold; u, the left singular vectors of W·Σxz whose singular values exceed
    `svd_tol`; left = W⁺·u, right = uᵀ·W; then, if asked, the trace constraint.
    """
    eigvecs, inv_sqrt, sqrt = whitening(sigma_xx)
    u, s, _ = torch.linalg.svd(along(eigvecs, inv_sqrt, sigma_xz), full_matrices=False)
    u = u * (s > svd_tol)  # the library zeroes the columns it truncates
    left = along(eigvecs, sqrt, u)
    right = along(eigvecs, inv_sqrt, u).mH  # uᵀ·W, as W is symmetric
    del eigvecs
    if constrain_cov_trace:
        left, right = constrain_trace(sigma_xx, left, right, u)
    return left, right


def whitening(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(V, λ^(-1/2), λ^(1/2)) with Σ = V·diag(λ)·Vᵀ: W = V·diag(λ^(-1/2))·Vᵀ and its
    pseudo-inverse, both zero on the eigenvalues at or under torch.linalg.pinv's
    threshold (λ ≤ λ_max·d·eps), as in the library."""
    eigvals, eigvecs = torch.linalg.eigh(sigma)
    mask = eigvals > eigvals[-1] * sigma.shape[-1] * torch.finfo(eigvals.dtype).eps
    eigvals = eigvals.clamp_min(0.0)  # PSD up to rounding
    inv_sqrt = torch.where(mask, eigvals.rsqrt(), 0.0)
    sqrt = torch.where(mask, eigvals.sqrt(), 0.0)
    return eigvecs, inv_sqrt, sqrt


def along(eigvecs: Tensor, scale: Tensor, x: Tensor) -> Tensor:
    """V·diag(scale)·Vᵀ·x for a thin x (d×k) without forming the d×d product."""
    return eigvecs @ (scale[:, None] * (eigvecs.mH @ x))


def constrain_trace(sigma: Tensor, left: Tensor, right: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The library's `constrain_cov_trace`: if P = I − left·right raises tr(Σ), mix P
    with the orthogonal projection Q = I − u·uᵀ, P' = α·P + (1 − α)·Q, at the α that
    keeps the trace. Its traces are taken in low-rank form, and I − P' = α·left·right +
    (1 − α)·u·uᵀ is returned as the rank ≤ 2k factors [α·left, (1 − α)·u] and [right; uᵀ].
    """
    old, rise, cross, orth = trace_changes(sigma, left, right, u)
    if not bool(rise > 0):
        return left, right
    # the library's quadratic in its names: x = tr(PΣPᵀ), y = 2·tr(PΣQᵀ), z = tr(QΣQᵀ)
    x, y, z, w = old + rise, 2 * (old + cross), old + orth, old
    discr = torch.sqrt(4 * w * x - 4 * w * y + 4 * w * z - 4 * x * z + y**2)
    alpha1 = (-y / 2 + z - discr / 2) / (x - y + z)
    alpha2 = (-y / 2 + z + discr / 2) / (x - y + z)
    alpha = torch.where(alpha1 > 0, alpha1, alpha2).clamp(0, 1)
    return torch.cat([alpha * left, (1 - alpha) * u], dim=1), torch.cat([right, u.mH])


def trace_changes(
    sigma: Tensor, left: Tensor, right: Tensor, u: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """tr(Σ), then tr(P·Σ·Pᵀ), tr(P·Σ·Qᵀ) and tr(Q·Σ·Qᵀ) less tr(Σ), for P = I − L·R and
    Q = I − u·uᵀ (Σ symmetric, real). Expanded, only d×k products of Σ appear, e.g.
    tr(P·Σ·Pᵀ) − tr(Σ) = tr((R·Σ·Rᵀ)·(Lᵀ·L)) − 2·tr(R·Σ·L); and the change is summed on
    its own, so that its sign is not lost in rounding tr(Σ) (as the dense trace loses it)."""
    sigma_r, sigma_u = sigma @ right.mH, sigma @ u
    r_sigma_l = torch.trace(left.mH @ sigma_r)  # tr(R·Σ·L) = tr(Lᵀ·Σ·Rᵀ)
    u_sigma_u = u.mH @ sigma_u
    rise = torch.trace((right @ sigma_r) @ (left.mH @ left)) - 2 * r_sigma_l
    cross = torch.trace((right @ sigma_u) @ (u.mH @ left)) - r_sigma_l
    cross = cross - torch.trace(u_sigma_u)
    orth = torch.trace(u_sigma_u @ (u.mH @ u)) - 2 * torch.trace(u_sigma_u)
    return torch.trace(sigma), rise, cross, orth
