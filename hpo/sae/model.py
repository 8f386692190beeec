"""Faithful-SAE: an SAE whose encoder @ decoder is a decomposition of a layer's weight.

Encoder E (in × C·r), decoder D (C·r × out). Component c is E[:, c] @ D[c, :] over its r
columns/rows (rank r, default 1); the components sum to E @ D, the effective weight in
(in × out) layout, i.e. the transpose of a torch `Linear.weight`.

After top-k only k·r of the C·r latents of a sample are non-zero, so the training step
keeps them in compact form (`TopK`: their values and indices): the decorrelation loss
works from them, and with many latents per kept one or a wide output, so does decoding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Decode by gathering the kept decoder rows when latents outnumber kept ones by more than
# GATHER_DECODE_RATIO, or when the output is at least GATHER_DECODE_MIN_OUT wide.
GATHER_DECODE_RATIO = 32
GATHER_DECODE_MIN_OUT = 512


class TopK(NamedTuple):
    """The latents a sample keeps, in compact form: [B, k·r] values and latent indices."""

    values: torch.Tensor
    indices: torch.Tensor


class FaithfulSAE(nn.Module):
    def __init__(self, d_in: int, d_out: int, n_components: int, top_k: int, rank: int = 1):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.n_components, self.top_k, self.rank = n_components, top_k, rank
        self.encoder = nn.Parameter(torch.empty(d_in, n_components * rank))
        self.decoder = nn.Parameter(torch.empty(n_components * rank, d_out))
        nn.init.xavier_normal_(self.encoder)
        nn.init.xavier_normal_(self.decoder)

    @torch.no_grad()
    def tie_to(self, weight_t: torch.Tensor) -> FaithfulSAE:
        """Start from E·D ≈ W: random decoder directions, encoder E = W·Dᵀ.

        Decoder rows get norm √(out / C·r), so that DᵀD ≈ I and E·D = W·DᵀD ≈ W; each
        latent then starts as the projection of the layer's output on its decoder
        direction (the tied "encoder = decoderᵀ" init of top-k SAEs, in output space),
        and a feature's largest latent is the component whose direction is nearest its
        own. Random encoders instead let several features start on one component, where
        top-k gives them no gradient to part (the 5-2 toy model's failure mode).
        """
        d = torch.randn(self.decoder.shape).to(self.decoder)  # same draw on every device
        d *= (self.d_out / self.n_latents) ** 0.5 / d.norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.decoder.copy_(d)
        self.encoder.copy_(weight_t.to(d) @ d.T)
        return self

    @property
    def n_latents(self) -> int:
        return self.n_components * self.rank

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Latents before top-k: [B, C·r]. Conditioning reads these (SCAR)."""
        return x @ self.encoder

    def select(self, z: torch.Tensor) -> TopK | None:
        """The top-k components per sample (by value for rank 1, by norm otherwise).

        None when top_k ≥ n_components: every latent is kept and the dense form is cheaper.
        """
        if self.top_k >= self.n_components:
            return None
        if self.rank == 1 and self.top_k == 1:
            return TopK(*z.max(dim=1, keepdim=True))  # one pass, no selection kernel
        if self.rank == 1:
            return TopK(*z.topk(self.top_k, dim=1, sorted=False))
        zc = z.view(z.shape[0], self.n_components, self.rank)
        comp = zc.norm(dim=2).topk(self.top_k, dim=1, sorted=False).indices  # [B, k]
        offsets = torch.arange(self.rank, device=z.device)
        indices = (comp[:, :, None] * self.rank + offsets).flatten(1)  # [B, k·r]
        return TopK(z.gather(1, indices), indices)

    def decode(self, kept: TopK) -> torch.Tensor:
        """Σ over kept latents of value · decoder row: [B, out].

        A fused gather-and-sum of the k·r kept rows per sample (B·k·r·out work) when the
        latents are many per kept one; otherwise one dense product, which is then as
        fast at narrow outputs. Wide outputs gather: the dense product and its two
        backward products grow with out while the top-k selection and scatter do not
        (BENCHMARKS.md, "SAE training", has the crossover).
        """
        b, m = kept.indices.shape
        narrow = self.d_out < GATHER_DECODE_MIN_OUT
        if narrow and self.n_latents <= GATHER_DECODE_RATIO * m:
            return self.densify(kept, kept.values.new_empty(b, self.n_latents)) @ self.decoder
        return F.embedding_bag(
            kept.indices, self.decoder, per_sample_weights=kept.values, mode="sum"
        )

    def densify(self, kept: TopK, like: torch.Tensor) -> torch.Tensor:
        """The kept latents as a dense [B, C·r] tensor (zeros elsewhere)."""
        return torch.zeros_like(like).scatter(1, kept.indices, kept.values)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction [B, out], sparse latents, pre-top-k latents)."""
        z = self.pre_activations(x)
        kept = self.select(z)
        if kept is None:
            return z @ self.decoder, z, z
        return self.decode(kept), self.densify(kept, z), z

    def effective_weight(self) -> torch.Tensor:
        """Σ components = E @ D, (in × out)."""
        return self.encoder @ self.decoder

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component factors: E_c [C, in, r] and D_c [C, r, out]."""
        e = self.encoder.view(self.d_in, self.n_components, self.rank).permute(1, 0, 2)
        d = self.decoder.view(self.n_components, self.rank, self.d_out)
        return e, d

    def components(self, index: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Component matrices [C, in, out] (or just those in `index`)."""
        e, d = self.factors()
        if index is not None:
            e, d = e[index], d[index]
        return e @ d

    def config(self) -> dict[str, int]:
        return {
            "d_in": self.d_in,
            "d_out": self.d_out,
            "n_components": self.n_components,
            "top_k": self.top_k,
            "rank": self.rank,
        }
