"""Where tensors live: "auto" means CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from hpo.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"params.device: {name!r} is not a device; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"params.device: {name!r} requested but CUDA is not available; use auto or cpu"
        )
    return device
