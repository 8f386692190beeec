"""A torchvision classifier with the user's trained weights, from a local file.

torchvision is optional (`pip install -e '.[vision]'`) and imported only here, when a
study uses it. The architecture is built without weights (`weights=None`: nothing
downloads) with the task's number of classes, then the user's state dict is loaded into
it, strictly: the file must hold exactly that architecture's keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo.errors import UserError


def torchvision_models() -> Any:
    try:
        import torchvision
    except ImportError:
        raise UserError(
            "task.arch: torchvision is not installed; pip install -e '.[vision]' (a torchvision "
            "built for your torch)"
        ) from None
    except Exception as err:  # a torchvision built for another torch fails on import
        raise UserError(
            f"task.arch: torchvision does not load beside this torch ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); install the torchvision built "
            "for your torch"
        ) from None
    return torchvision.models


def architecture(arch: str, n_classes: int) -> nn.Module:
    """torchvision.models.<arch>(num_classes=n_classes), untrained."""
    models = torchvision_models()
    names = models.list_models(module=models)
    if arch not in names:
        raise UserError(
            f"task.arch: {arch!r} is not a torchvision classification model; e.g. "
            f"{', '.join(n for n in names if n.startswith(('resnet', 'vit_', 'convnext')))}"
        )
    model: nn.Module = models.get_model(arch, weights=None, num_classes=n_classes)
    return model


def read_state(path: Path, field: str) -> dict[str, torch.Tensor]:
    """The state dict in `path` (a bare state dict, or one under "state_dict" or
    "model"); a UserError naming `field` for a missing or unreadable file."""
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"{field}: {path} {why}; give the trained model's state dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"{field}: {path} is not a torch state dict ({type(err).__name__}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{field}: {path} holds no state dict (a dict of tensors)")
    return state


def trained_classifier(arch: str, n_classes: int, weights: Path) -> nn.Module:
    """The architecture with the weights in `weights` loaded strictly, in eval mode."""
    state = read_state(weights, "task.weights")
    model = architecture(arch, n_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        missing = sorted(set(model.state_dict()) - set(state))
        extra = sorted(set(state) - set(model.state_dict()))
        detail = (
            f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra else ""
        )
        if not detail:
            detail = str(err).strip().splitlines()[-1].strip()[:200]
        raise UserError(
            f"task.weights: {weights} does not fit torchvision {arch}(num_classes={n_classes}) "
            f"({detail})"
        ) from None
    return model.eval()
