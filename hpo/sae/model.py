"""Faithful-SAE: an SAE whose encoder @ decoder is a decomposition of a layer's weight.

Encoder E (in × C·r), decoder D (C·r × out). Component c is E[:, c] @ D[c, :] over its r
columns/rows (rank r, default 1); the components sum to E @ D, the effective weight in
(in × out) layout, i.e. the transpose of a torch `Linear.weight`.
"""

from __future__ import annotations

import torch
from torch import nn


class FaithfulSAE(nn.Module):
    def __init__(self, d_in: int, d_out: int, n_components: int, top_k: int, rank: int = 1):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.n_components, self.top_k, self.rank = n_components, top_k, rank
        self.encoder = nn.Parameter(torch.empty(d_in, n_components * rank))
        self.decoder = nn.Parameter(torch.empty(n_components * rank, d_out))
        nn.init.xavier_normal_(self.encoder)
        nn.init.xavier_normal_(self.decoder)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Latents before top-k: [B, C·r]. Conditioning reads these (SCAR)."""
        return x @ self.encoder

    def sparsify(self, z: torch.Tensor) -> torch.Tensor:
        """Keep the top-k components per sample (by value for rank 1, by norm otherwise)."""
        if self.top_k >= self.n_components:
            return z
        if self.rank == 1:
            vals, idx = z.topk(self.top_k, dim=1)
            return torch.zeros_like(z).scatter_(1, idx, vals)
        zc = z.view(z.shape[0], self.n_components, self.rank)
        idx = zc.norm(dim=2).topk(self.top_k, dim=1).indices
        mask = torch.zeros(zc.shape[:2], dtype=z.dtype, device=z.device).scatter_(1, idx, 1.0)
        return (zc * mask[:, :, None]).view_as(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction [B, out], sparse latents, pre-top-k latents)."""
        z = self.pre_activations(x)
        s = self.sparsify(z)
        return s @ self.decoder, s, z

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
