"""Which rows a cache keeps: reproducible subsamples of samples and of tokens.

A split larger than its row cap keeps the `cap` samples with the smallest keys, a key
being a hash of (seed, sample index): the same samples whatever the batch size or the
order batches arrive in, and a uniform draw however the data set is sorted. A layer that
sees sequences keeps `k` tokens per sample, chosen the same way among its real tokens
(an attention mask's ones), so each sample weighs the same and padding never becomes a
row. Pure functions: no data, no files.
"""

from __future__ import annotations

import numpy as np
import torch

KEY_MAX = torch.iinfo(torch.int64).max

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    mixed: np.ndarray = z ^ (z >> np.uint64(31))
    return mixed


def _base(seed: int, salt: int) -> np.ndarray:
    salted = np.array([salt], dtype=np.uint64) * _GOLDEN  # arrays wrap; scalars warn
    return _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + salted)


def sample_keys(seed: int, index: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """A key in [0, 2⁶³) per sample index: the cap keeps the smallest."""
    i = index.detach().cpu().numpy().astype(np.uint64)
    keys = _mix(_base(seed, salt) + i * _GOLDEN)
    return torch.from_numpy((keys >> np.uint64(1)).astype(np.int64))


def smallest(keys: torch.Tensor, cap: int) -> torch.Tensor:
    """Positions of the `cap` smallest keys, in their original order."""
    if len(keys) <= cap:
        return torch.arange(len(keys))
    return keys.topk(cap, largest=False).indices.sort().values


def token_positions(
    seed: int, index: torch.Tensor, valid: torch.Tensor, k: int, salt: int = 1
) -> torch.Tensor:
    """[B, k] token positions per sample (sample indices `index`, real tokens `valid`
    [B, T]): the k real tokens with the smallest keys, repeated in key order when a
    sample has fewer than k. A ValueError for a sample without a real token."""
    n_valid = valid.sum(dim=1)
    if bool((n_valid == 0).any()):
        bad = int(index[(n_valid == 0).nonzero()[0, 0]])
        raise ValueError(f"sample {bad} has no real token (its attention mask is all zero)")
    t = valid.shape[1]
    per_sample = _mix(_base(seed, salt) + index.cpu().numpy().astype(np.uint64) * _GOLDEN)
    grid = _mix(per_sample[:, None] + np.arange(t, dtype=np.uint64)[None, :] * _GOLDEN)
    keys = torch.from_numpy((grid >> np.uint64(1)).astype(np.int64)).to(valid.device)
    keys = keys.masked_fill(~valid.bool(), KEY_MAX)
    order = keys.argsort(dim=1, stable=True)
    slots = torch.arange(k, device=valid.device)[None, :] % n_valid[:, None]
    return order.gather(1, slots)


def gather_tokens(z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, T, d] → [B, k, d]: the tokens at `positions` ([B, k])."""
    return z.gather(1, positions.to(z.device)[..., None].expand(-1, -1, z.shape[-1]))
