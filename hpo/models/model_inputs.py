"""A model's inputs: one tensor (passed positionally) or a dict of tensors (passed as
keyword arguments, as a tokenizer's `input_ids` and `attention_mask` are).

Everything that runs a model on cached inputs (the layer-input hooks, the scorer, the
call-order probe) goes through these few functions, so that a text model's inputs work
wherever an image model's tensor does. Every tensor of a dict has the sample as its first
dimension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

ModelInputs = torch.Tensor | Mapping[str, torch.Tensor]


def call_model(model: nn.Module, x: ModelInputs) -> Any:
    """`model(x)` for a tensor, `model(**x)` for a dict."""
    if isinstance(x, torch.Tensor):
        return model(x)
    return model(**x)


def call_args(x: ModelInputs) -> tuple[tuple[Any, ...], dict[str, torch.Tensor]]:
    """(args, kwargs) for `torch.func.functional_call`."""
    if isinstance(x, torch.Tensor):
        return (x,), {}
    return (), dict(x)


def n_samples(x: ModelInputs) -> int:
    if isinstance(x, torch.Tensor):
        return len(x)
    return len(next(iter(x.values())))


def take(x: ModelInputs, index: slice | torch.Tensor) -> ModelInputs:
    """The samples `index` selects (a slice or an index tensor), of every tensor."""
    if isinstance(x, torch.Tensor):
        return x[index]
    return {k: v[index] for k, v in x.items()}


def to_device(x: ModelInputs, device: torch.device | str) -> ModelInputs:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return {k: v.to(device) for k, v in x.items()}


def concat(parts: Sequence[ModelInputs]) -> ModelInputs:
    """Batches of inputs as one; a ValueError naming the key whose shapes differ."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(_same_trailing(list(parts), "inputs"))  # type: ignore[arg-type]
    return {
        k: torch.cat(_same_trailing([p[k] for p in parts], f"inputs[{k!r}]"))  # type: ignore[index]
        for k in first
    }


def tensors(x: ModelInputs) -> list[torch.Tensor]:
    """Every tensor of the inputs, in a stable order (for digests)."""
    if isinstance(x, torch.Tensor):
        return [x]
    return [x[k] for k in sorted(x)]


def _same_trailing(parts: list[torch.Tensor], what: str) -> list[torch.Tensor]:
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(
            f"{what} has per-sample shape {a} in one batch and {b} in another; cached inputs "
            "need one shape (pad sequences to a fixed length, e.g. padding='max_length')"
        )
    return parts
