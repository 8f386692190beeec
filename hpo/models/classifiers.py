"""The models that get decomposed: the seed's CNN, a small MLP, and the toy AE.

The classifiers expose the split that scoring needs: `layer_input(x, layer)` is what
feeds the decomposed layer (the trunk, run once per split), and `head(z, layer, weight)`
runs that layer with a given weight and everything after it. `forward` is exactly
`head(layer_input(x))` with the layer's own weight, so a debiased model is the same class
with one tensor swapped.
"""

from __future__ import annotations

from typing import Protocol, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn


class LayerModel(Protocol):
    """The head protocol: the layers a model runs from (`LAYERS`), what feeds one of them
    (`layer_input`) and the model from that layer on (`head`). The classifiers below
    declare it; hpo.models.final_layer gives it to a user model whose layer is its last."""

    @property
    def LAYERS(self) -> tuple[str, ...]: ...

    def layer_input(self, x: torch.Tensor, layer: str) -> torch.Tensor: ...

    def head(self, z: torch.Tensor, layer: str) -> torch.Tensor: ...


def runs_from_layer(model: nn.Module, layer: str) -> TypeGuard[LayerModel]:
    """Whether `model` can run from `layer`'s input (the fast path: cached inputs)."""
    return callable(getattr(model, "head", None)) and layer in getattr(model, "LAYERS", ())


class ColoredMnistClassifier(nn.Module):
    """fc1 → ReLU → dropout → fc2 on top of `features`; subclasses define the trunk."""

    LAYERS = ("fc1", "fc2")

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(128, 64)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_input(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        h = self.features(x)
        if layer == "fc1":
            return h
        out: torch.Tensor = self.dropout(F.relu(self.fc1(h)))
        return out

    def head(self, z: torch.Tensor, layer: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the decomposed layer's input; `weight` (out × in) replaces its own.

        A leading batch dimension on `weight` ([A, out, in]) scores A edited weights at
        once and returns [A, N, 10]: how an α sweep costs one batched matmul.
        """
        lin: nn.Linear = getattr(self, layer)
        h: torch.Tensor
        if weight is None:
            h = lin(z)  # the module itself: hooks see the layer called
        else:
            h = torch.matmul(z, weight.transpose(-1, -2)) + lin.bias
        if layer == "fc2":
            return h
        logits: torch.Tensor = self.fc2(self.dropout(F.relu(h)))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer_input(x, "fc1"), "fc1")


class ColorMnistCNN(ColoredMnistClassifier):
    """The seed's CNN: conv 32/64/128 with max-pool, global average pool, fc 128→64→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        pooled: torch.Tensor = self.gap(x)
        return pooled.flatten(1)


class ColorMnistMLP(ColoredMnistClassifier):
    """A small MLP with the same fc1/fc2 head, for quick studies and tests."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(3 * 28 * 28, 128)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc0(x.flatten(1)))


BASE_MODELS: dict[str, type[ColoredMnistClassifier]] = {
    "cnn": ColorMnistCNN,
    "mlp": ColorMnistMLP,
}


class ToySuperpositionAE(nn.Module):
    """The 5-2 toy model: h = x·W, out = ReLU(h·Wᵀ + b)."""

    def __init__(self, n_features: int, hidden_dim: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(n_features, hidden_dim))
        nn.init.xavier_normal_(self.W)
        self.b = nn.Parameter(torch.zeros(n_features))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encode(x) @ self.W.T + self.b)
