"""hpo.debias.leace: LEACE's eraser as thin factors, against concept-erasure's dense one.

Every case fits a `LeaceFitter` on rows made here (in chunks, as `Leace.fit` does) and
compares `leace_eraser(fitter)` with `fitter.eraser`: the product of the factors with the
library's `proj_left @ proj_right`, and the bias, in float64.
"""

from __future__ import annotations

import pytest
import torch
from concept_erasure import LeaceEraser, LeaceFitter
from torch import Tensor

from hpo.debias.leace import constrain_trace, leace_eraser, shrunk_covariance

EPS = torch.finfo(torch.float64).eps
TOL = 1e-9


def concept_rows(
    d: int, k: int, n: int, seed: int, rank: int | None = None
) -> tuple[Tensor, Tensor]:
    """n rows of d correlated features (of rank `rank`, all if None) whose mean moves with
    one of k concepts, and the concepts one-hot."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    r = rank or d
    mixing = torch.randn(r, d, generator=g, dtype=torch.float64)
    mixing *= torch.logspace(0, -1, r, dtype=torch.float64)[:, None]
    shifts = torch.randn(k, r, generator=g, dtype=torch.float64)
    latent = torch.randn(n, r, generator=g, dtype=torch.float64) + 0.5 * shifts[labels]
    return latent @ mixing + 3.0, torch.nn.functional.one_hot(labels, k).double()


def fitted(x: Tensor, z: Tensor, **settings: object) -> LeaceFitter:
    fitter = LeaceFitter(x.shape[1], z.shape[1], dtype=torch.float64, **settings)
    for rows, labels in zip(x.split(97), z.split(97), strict=True):
        fitter.update(rows, labels)
    return fitter


def relative(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius), or ‖a‖ where b is zero (every direction truncated)."""
    scale = b.norm()
    return float((a - b).norm() / scale if scale > 0 else a.norm())


def assert_matches(
    fitter: LeaceFitter, eraser: LeaceEraser, library: Tensor, tol: float = TOL
) -> float:
    """Our factors' product against `library`, the library's I − P, and our bias against
    `eraser`'s. Returns the relative difference of the products."""
    ours = leace_eraser(fitter)
    assert ours.left.shape[1] == ours.right.shape[0] <= 2 * fitter.z_dim  # thin
    diff = relative(ours.left @ ours.right, library)
    assert diff <= tol, diff
    if fitter.affine:
        assert eraser.bias is not None and ours.bias is not None
        assert relative(ours.bias, eraser.bias) <= TOL
    else:
        assert eraser.bias is None and ours.bias is None
    return diff


def library_eraser(fitter: LeaceFitter) -> tuple[LeaceEraser, bool]:
    """`fitter.eraser`, and whether it took its trace branch: the one place where it calls
    `torch.linalg.svd` with full matrices (of I − P')."""
    full: list[bool] = []
    svd = torch.linalg.svd

    def spy(a: Tensor, *args: object, **kwargs: object) -> object:
        full.append(bool(kwargs.get("full_matrices", True)))
        return svd(a, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.linalg, "svd", spy)
        eraser = fitter.eraser
    assert full, "the library no longer calls torch.linalg.svd"
    return eraser, any(full)


def masked(fitter: LeaceFitter) -> int:
    """How many of the covariance's eigenvalues the library's pinv threshold drops."""
    eigvals = torch.linalg.eigh(fitter.sigma_xx)[0]  # as the library finds them
    return int((eigvals <= eigvals[-1] * fitter.x_dim * EPS).sum())


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("d", [8, 50, 300])
def test_the_factors_multiply_to_the_librarys_projection(d: int, k: int, affine: bool) -> None:
    x, z = concept_rows(d, k, n=4 * d + 200, seed=d + k)
    fitter = fitted(x, z, affine=affine)
    eraser, branched = library_eraser(fitter)
    assert not branched
    assert_matches(fitter, eraser, eraser.proj_left @ eraser.proj_right)


@pytest.mark.parametrize(
    "settings", [{"constrain_cov_trace": False}, {"svd_tol": 0.2}], ids=["no_trace", "svd_tol"]
)
def test_the_fitters_settings_are_followed(settings: dict[str, object]) -> None:
    x, z = concept_rows(50, 10, n=400, seed=1)
    fitter = fitted(x, z, **settings)
    eraser, branched = library_eraser(fitter)
    assert not branched
    assert_matches(fitter, eraser, eraser.proj_left @ eraser.proj_right)
    if "svd_tol" in settings:  # some directions fell under the tolerance, and are gone
        assert (leace_eraser(fitter).left.norm(dim=0) == 0).sum() >= 1


@pytest.mark.parametrize(("d", "k"), [(8, 2), (50, 3), (300, 3)])
def test_the_eigenvalue_mask_drops_a_rank_deficient_covariances_null_space(d: int, k: int) -> None:
    """Without shrinkage (which makes the covariance full rank), rows of rank d/2 leave
    d/2 eigenvalues under pinv's threshold: W and W⁺ must be zero there."""
    x, z = concept_rows(d, k, n=4 * d + 200, seed=d, rank=d // 2)
    fitter = fitted(x, z, shrinkage=False)
    assert masked(fitter) == d - d // 2
    eraser, branched = library_eraser(fitter)
    assert not branched
    assert_matches(fitter, eraser, eraser.proj_left @ eraser.proj_right)


def near_the_mask(d: int, seed: int) -> tuple[Tensor, Tensor]:
    """A flat covariance, and one more direction that carries the concept alone, with a
    variance 1.1 times pinv's threshold: erasing it lowers tr(Σ) by about one unit in the
    last place, under the rounding of the library's dense tr(P·Σ·Pᵀ)."""
    g = torch.Generator().manual_seed(seed)
    m = d - 1
    flat, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    labels = torch.randint(0, 2, (m,), generator=g).repeat(2)
    x = torch.zeros(2 * m, d, dtype=torch.float64)
    x[:m, :m], x[m:, :m] = flat, -flat  # ± pairs: no covariance with the concept
    sign = 2.0 * labels - 1
    top = 2 / (2 * m - 1)  # the flat part's eigenvalue
    x[:, m] = (1.1 * top * d * EPS / sign.var()).sqrt() * sign
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return x @ rotation.T, torch.nn.functional.one_hot(labels, 2).double()


def mixed_projection(eraser: LeaceEraser) -> Tensor:
    """I − P' from the library's trace branch. concept-erasure 0.2.4 factors it by SVD as
    `u * s.sqrt()` and `vh * s.sqrt()`, which scales vh's columns, not its rows, so its
    `proj_left @ proj_right` is not I − P'; the column norms of `proj_left` are √s, and
    undoing the column scaling gives u·diag(s)·vh = I − P'."""
    left, right = eraser.proj_left, eraser.proj_right
    root = left.norm(dim=0)
    product = left * root @ (right / root)
    # if this fails, the library factors I − P' correctly now: compare its product directly
    assert relative(left @ right, product) > 0.5
    return product


def test_where_the_library_raises_the_trace_by_rounding_the_eraser_is_unmixed() -> None:
    """In exact arithmetic LEACE lowers tr(Σ) by ‖W⁺u‖², so the library's trace branch is
    reached only by rounding: here, on a covariance as ill-conditioned as the mask allows
    (κ ≈ 1/(d·eps)), on about two seeds in a hundred. Its mixture is then within rounding
    of the unmixed eraser, which the low-rank traces (which keep the sign of the change)
    give. Which seeds round upwards depends on the BLAS, so 400 are tried.
    At this conditioning the whitened direction is known to about √(eps/d) only: the two
    erasers differ by up to ~7e-9 whichever branch the library takes, and the library
    against itself on the same rows with their features permuted by ~8e-9 (median);
    hence `tol`."""
    d, diffs = 50, []
    for seed in range(400):
        # on some seeds the direction falls under the mask: both erasers are then zero
        fitter = fitted(*near_the_mask(d, seed), shrinkage=False)
        try:
            eraser, branched = library_eraser(fitter)
        except torch.linalg.LinAlgError:  # its α is 0/0 where P and Q agree to rounding
            continue
        if branched:
            diffs.append(assert_matches(fitter, eraser, mixed_projection(eraser), tol=2e-8))
        else:
            assert_matches(fitter, eraser, eraser.proj_left @ eraser.proj_right, tol=2e-8)
    assert diffs, "no seed made the library's dense trace rise"


def test_a_projection_that_raises_the_trace_is_mixed_as_the_library_mixes() -> None:
    """The mixture itself, on an oblique projection that does raise tr(Σ), against the
    library's formulas transcribed densely (its P, Q, traces and α); and P' keeps tr(Σ)."""
    d, k = 40, 3
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    sigma = a @ a.T / d
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    left = u + 0.3 * torch.randn(d, k, generator=g, dtype=torch.float64)
    right = torch.linalg.solve(u.T @ left, u.T)  # right·left = I: P = I − left·right projects
    eye = torch.eye(d, dtype=torch.float64)
    p, q = eye - left @ right, eye - u @ u.T
    x, w = torch.trace(p @ sigma @ p.T), torch.trace(sigma)
    assert x > w  # the trace rises
    y, z = 2 * torch.trace(p @ sigma @ q.T), torch.trace(q @ sigma @ q.T)
    discr = torch.sqrt(4 * w * x - 4 * w * y + 4 * w * z - 4 * x * z + y**2)
    alpha1 = (-y / 2 + z - discr / 2) / (x - y + z)
    alpha2 = (-y / 2 + z + discr / 2) / (x - y + z)
    alpha = torch.where(alpha1 > 0, alpha1, alpha2).clamp(0, 1)
    assert 0.1 < alpha < 0.9  # a real mixture
    mixed = eye - (alpha * p + (1 - alpha) * q)

    ours_left, ours_right = constrain_trace(sigma, left, right, u)
    assert ours_left.shape == (d, 2 * k) and ours_right.shape == (2 * k, d)
    assert relative(ours_left @ ours_right, mixed) <= TOL
    kept = eye - ours_left @ ours_right
    assert abs(float(torch.trace(kept @ sigma @ kept.T) / w) - 1) <= TOL


@pytest.mark.parametrize("shrinkage", [True, False])
@pytest.mark.parametrize(("d", "n"), [(8, 400), (50, 60), (300, 200)])
def test_the_shrunk_covariance_is_the_fitters_in_one_matrix(
    d: int, n: int, shrinkage: bool
) -> None:
    """The library's `sigma_xx` (its optimal linear shrinkage, or Bessel's n − 1), to
    rounding; n < d too, where the shrinkage matters most."""
    x, z = concept_rows(d, 3, n, seed=d)
    fitter = fitted(x, z, shrinkage=shrinkage)

    ours, theirs = shrunk_covariance(fitter), fitter.sigma_xx

    assert (ours - theirs).norm() <= 1e-12 * theirs.norm()
    assert not torch.equal(ours, fitter.sigma_xx_)  # a new matrix; the sums are kept
