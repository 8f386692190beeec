"""The Faithful-SAE loss terms, as pure functions of tensors.

Each returns a scalar; the trainer weighs them and returns them by name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE to the layer's pre-activation (without its bias, which is not decomposed)."""
    return F.mse_loss(pred, target)


def faithfulness(effective_weight: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """MSE between Σ components and the layer's weight (both in × out)."""
    return F.mse_loss(effective_weight, weight_t)


class Anchor(NamedTuple):
    """The exact faithfulness loss and its gradients at a recent point (E₀, D₀): what
    `faithfulness_sketch` subtracts the sketch's own noise with (a control variate)."""

    encoder: torch.Tensor
    decoder: torch.Tensor
    value: torch.Tensor
    grad_encoder: torch.Tensor
    grad_decoder: torch.Tensor


@torch.no_grad()
def faithfulness_anchor(
    encoder: torch.Tensor, decoder: torch.Tensor, weight_t: torch.Tensor
) -> Anchor:
    """`faithfulness(E·D, W)` and its gradients, exactly (3·in·C·out multiply-adds)."""
    residual = weight_t - encoder @ decoder
    scale = -2 / weight_t.numel()
    return Anchor(
        encoder.detach().clone(),
        decoder.detach().clone(),
        residual.square().sum() / weight_t.numel(),
        scale * (residual @ decoder.T),
        scale * (encoder.T @ residual),
    )


def faithfulness_sketch(
    encoder: torch.Tensor,
    decoder: torch.Tensor,
    weight_t: torch.Tensor,
    probes: torch.Tensor,
    anchor: Anchor | None = None,
) -> torch.Tensor:
    """An unbiased estimate of `faithfulness(encoder @ decoder, weight_t)`, in value and
    gradient, that never forms the in × out product: ‖(W − E·D)·S‖² / (in·out) for
    probes S [out, s] with E[S·Sᵀ] = I (`sketch_probes`). E·(D·S) costs (in + out)·C·s
    and W·S in·out·s multiply-adds, against in·C·out for E·D.

    Alone, its gradient's error grows like √(out / s) times the gradient. With an
    `anchor` (exact at a recent E₀, D₀) the same probes also sketch the loss at the
    anchor, and the estimate is sketch(E, D) − sketch(E₀, D₀) + exact(E₀, D₀), in value
    and in gradient (SVRG's control variate): still unbiased, with an error that
    shrinks with the distance to the anchor, and exact when s ≥ out.
    """
    n = weight_t.numel()
    ws = weight_t @ probes
    estimate = (ws - encoder @ (decoder @ probes)).square().sum() / n
    if anchor is None:
        return estimate
    with torch.no_grad():
        ds0 = anchor.decoder @ probes
        r0 = ws - anchor.encoder @ ds0  # (W − E₀D₀)S
        sketch0 = r0.square().sum() / n
        # the exact gradient at the anchor, less the sketch's gradient there
        fix_e = anchor.grad_encoder + (2 / n) * (r0 @ ds0.T)
        fix_d = anchor.grad_decoder + (2 / n) * ((anchor.encoder.T @ r0) @ probes.T)
    linear = (encoder * fix_e).sum() + (decoder * fix_d).sum()
    return estimate - sketch0 + anchor.value + (linear - linear.detach())


def sketch_probes(d_out: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Probes for `faithfulness_sketch`, on the generator's device: √(out / s)·Q, where Q
    [out, s] has orthonormal columns spanning a uniformly random subspace (those of a
    Gaussian draw), so that E[S·Sᵀ] = (out / s)·(s / out)·I = I. Orthonormal columns
    estimate with less variance than Gaussian ones, and exactly once s ≥ out (then
    s = out and S·Sᵀ = I)."""
    size = min(size, d_out)
    gaussian = torch.randn(d_out, size, generator=generator, device=generator.device)
    q: torch.Tensor = torch.linalg.qr(gaussian).Q
    return q.mul_((d_out / size) ** 0.5)


def quadratic_ramp(step: int, steps: int) -> float:
    """The seed's schedule for the faithfulness weight: (step / steps)²."""
    return (step / max(1, steps)) ** 2


def schatten_rank(e: torch.Tensor, d: torch.Tensor, p: float, eps: float = 1e-12) -> torch.Tensor:
    """APD's simplicity loss: mean over components of ‖E_c D_c‖_p^p (Schatten-p).

    Factored form, never building the in × out matrices: for rank 1 the only singular
    value is ‖e‖·‖d‖; for rank r it is the singular values of R_E R_Dᵀ (r × r), from the
    QR factors of E_c and D_cᵀ.
    """
    sv: torch.Tensor  # the singular values
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


def sparsity(pre: torch.Tensor, decoder_norms: torch.Tensor | None = None) -> torch.Tensor:
    """L1 of the latents before top-k (after top-k they are sparse by construction).

    With `decoder_norms` [latents], each latent's L1 is weighed by its decoder row's norm:
    the size of its contribution to the output. The plain L1 is not invariant to E·s, D/s
    (which changes no component), so training lowers it by shrinking the encoder and
    growing the decoder, and the penalty fades as it goes; the weighed one cannot fade.
    """
    if decoder_norms is None:
        return pre.abs().mean()
    return (pre.abs() * decoder_norms).mean()


def decorrelation(latents: torch.Tensor) -> torch.Tensor:
    """Σ of squared off-diagonal covariances of the latents, divided by their number.

    ‖Cov‖_F² is computed from the smaller Gram matrix (B × B when the batch is smaller
    than the latent count). Top-k latents take `decorrelation_topk`, which gives the
    same value from the k kept latents per sample.
    """
    b, c = latents.shape
    if b < 2:
        return latents.new_zeros(())
    centered = latents - latents.mean(dim=0, keepdim=True)
    gram = centered @ centered.T if b < c else centered.T @ centered
    total = gram.square().sum() / (b - 1) ** 2
    diag = centered.square().sum(dim=0) / (b - 1)
    return (total - diag.square().sum()) / c


def decorrelation_topk(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """`decorrelation` of the dense [B, L] latents S that are `values` at `indices`, else 0.

    The same B × B Gram matrix G = X·Xᵀ of the centred latents X = S − 1μᵀ, with one
    factor sparse: S·Xᵀ sums k rows of Xᵀ per sample, and G = S·Xᵀ − 1(Xμ)ᵀ. The gradient
    needs G·X only where S is non-zero, where it is G·S − (G1)μᵀ, and G·S sums k rows of
    G per latent. That is 2·B²·k multiply-adds for the dense form's 2·B²·L (16 M against
    537 M at B = 512, L = 1024, k = 32), with the same float32 rounding: one factor of
    every product is centred, as in the dense form. Its sorting and gathers cost a few
    passes over B·k entries, so small problems, or few latents per kept one, keep the
    dense form (on CPU at B = 512: a tie at L = 256, k = 16; the sparse form is 3×
    faster at L = 512 to 1024 with k = 32 to 128).
    """
    b, k = values.shape
    if b < 2:
        return values.new_zeros(())
    dense_work = b * n_latents * min(b, n_latents)
    if dense_work < SPARSE_MIN_WORK or dense_work < SPARSE_MIN_RATIO * b * b * k:
        return decorrelation(values.new_zeros(b, n_latents).scatter(1, indices, values))
    loss: torch.Tensor  # torch.autograd.Function.apply is untyped
    loss = _TopKDecorrelation.apply(values, indices, n_latents)  # type: ignore[no-untyped-call]
    return loss


# The sparse form is used when the dense one's B·L·min(B, L) multiply-adds are at least
# this many, and this many times the sparse one's B²·k.
SPARSE_MIN_WORK = 1 << 26
SPARSE_MIN_RATIO = 4


class _TopKDecorrelation(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, values: torch.Tensor, indices: torch.Tensor, n_latents: int
    ) -> torch.Tensor:
        b, k = values.shape
        rows = torch.arange(b, device=values.device).repeat_interleave(k)
        flat = indices.reshape(-1)
        centered_t = values.new_zeros(n_latents, b).index_put_((flat, rows), values.reshape(-1))
        mean = centered_t.sum(dim=1) / b
        centered_t -= mean[:, None]  # Xᵀ [L, B]
        # S·Xᵀ [B, B]: row i is Σ_a v_ia · Xᵀ[c_ia]; minus 1(Xμ)ᵀ it is X·Xᵀ.
        sxt = F.embedding_bag(indices, centered_t, per_sample_weights=values, mode="sum")
        gram = sxt - (mean @ centered_t)[None, :]
        gram = (gram + gram.T) / 2
        var = centered_t.square().sum(dim=1)  # diagonal of XᵀX: (B − 1)·variances
        ctx.save_for_backward(values, flat, rows, mean, gram, var)
        ctx.n_latents = n_latents
        return (gram.square().sum() - var.square().sum()) / ((b - 1) ** 2 * n_latents)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # d/dX = 4(G·X − X·diag(var)) / ((B − 1)²·L), and d/dS = d/dX (its columns sum
        # to 0, so the mean's share vanishes); only the kept entries of S are read.
        values, flat, rows, mean, gram, var = ctx.saved_tensors
        b, k = values.shape
        n_latents = ctx.n_latents
        # Sᵀ·G [L, B]: latent c's row is Σ over the samples j keeping c of v_jc · G[j].
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=n_latents)
        st_g = F.embedding_bag(
            rows[order],
            gram,
            torch.cumsum(counts, 0) - counts,
            per_sample_weights=values.reshape(-1)[order],
            mode="sum",
        )
        gs = st_g.reshape(-1).index_select(0, flat * b + rows).view(b, k)  # (G·S)[i, c_ia]
        mu = mean.index_select(0, flat).view(b, k)
        gx = gs - gram.sum(dim=1, keepdim=True) * mu  # (G·X)[i, c_ia]
        grad_values = gx - (values - mu) * var.index_select(0, flat).view(b, k)
        return grad_values * (4 * grad / ((b - 1) ** 2 * n_latents)), None, None
