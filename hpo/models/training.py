"""Training the classifiers that get debiased, and the two references beside them."""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hpo.cpus import reproducible_threads
from hpo.models.classifiers import ColoredMnistClassifier, runs_from_layer

M = TypeVar("M", bound=nn.Module)


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


@reproducible_threads()
def train_classifier(
    model: ColoredMnistClassifier,
    images: torch.Tensor,
    digits: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str,
    progress: bool,
) -> ColoredMnistClassifier:
    """Adam on cross-entropy; images stay uint8 on the device and are scaled per batch.
    One torch thread (`reproducible_threads`): the same seed, the same model, on any
    `--threads`."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(digits)
    model.train()
    steps = epochs * ((n + batch_size - 1) // batch_size)
    with tqdm(
        total=steps, desc=desc, disable=not progress, leave=False, unit="batch", mininterval=1.0
    ) as bar:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(images.device)
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                loss = F.cross_entropy(model(images_to_float(images[idx])), digits[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
                opt.step()
                bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@reproducible_threads()
def retrain_head(
    model: M,
    layer: str,
    z: torch.Tensor,
    digits: torch.Tensor,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> M:
    """Last-layer retraining: re-initialise the layers from `layer` on and fit them on
    balanced data, from cached inputs of `layer` (the trunk stays frozen and never runs).
    `model` declares the head protocol for `layer` (a built-in classifier, or a user
    model given it by hpo.models.final_layer)."""
    split: nn.Module = model
    if not runs_from_layer(split, layer):
        raise ValueError(f"the model cannot run from {layer!r}: it declares no LAYERS and head()")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = [
        m for name, m in model.named_children() if name in split.LAYERS[split.LAYERS.index(layer) :]
    ]
    for module in head:
        # nn.Module.__getattr__ is typed Tensor | Module; the head's layers define it
        module.reset_parameters()  # type: ignore[operator]
    params = [p for m in head for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    n = len(digits)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(z.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(split.head(z[idx], layer), digits[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
            opt.step()
    return model.eval()
