"""A model whose decomposed layer is its last: run it from that layer's cached inputs.

The built-in models declare `LAYERS`, `head(z, layer)` and `layer_input(x, layer)`, so
scoring starts from the cached layer inputs and the trunk never reruns (see
hpo.debias.scoring). A third-party classifier (a torchvision backbone's `fc`, a Hugging
Face model's `classifier`) has none of these, but where the layer's output *is* the
model's output, its head is the layer itself. `attach_final_head` checks that once on
real inputs and gives the model those three, as plain attributes of the instance: its
class and its state dict stay its own, so an export loads into the user's class.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from hpo.models.model_inputs import ModelInputs, call_model


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


@torch.no_grad()
def is_final_layer(model: nn.Module, layer: str, example: ModelInputs) -> bool:
    """Whether `model`'s output on `example` is exactly what `layer` returned."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _a, out: seen.append(out.detach())
    )
    try:
        out = _logits(call_model(model, example))
    finally:
        handle.remove()
    return len(seen) == 1 and seen[0].shape == out.shape and torch.equal(seen[0], out)


def attach_final_head(model: nn.Module, layer: str, example: ModelInputs) -> bool:
    """Give `model` the built-in models' head protocol for `layer` where `layer` is its
    final layer (checked on `example`); False (and nothing changed) where it is not."""
    if not is_final_layer(model, layer, example):
        return False
    install_final_head(model, layer)
    return True


def install_final_head(model: nn.Module, layer: str) -> None:
    """The head protocol for `layer`, as `attach_final_head` found it holds (a bundle
    records that, so a worker installs it without inputs to check it on)."""
    # nn.Module.__setattr__ is typed for tensors and modules only; any value is accepted
    model.LAYERS = (layer,)  # type: ignore[assignment]
    model.head = types.MethodType(_head, model)  # type: ignore[assignment]
    model.layer_input = types.MethodType(_layer_input, model)  # type: ignore[assignment]


def _head(self: nn.Module, z: torch.Tensor, layer: str) -> torch.Tensor:
    out: torch.Tensor = self.get_submodule(layer)(z)
    return out


@torch.no_grad()
def _layer_input(self: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = self.get_submodule(layer).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach())
    )
    try:
        self(x)
    finally:
        handle.remove()
    return seen[0]


def logits_output(model: nn.Module) -> nn.Module:
    """Make `model` return a tensor of logits where it returns an output object (a
    Hugging Face `SequenceClassifierOutput`): a forward hook replaces its output by
    `.logits`, so that scoring, references and exports see a classifier."""
    model.register_forward_hook(lambda _m, _a, out: _logits(out))
    return model
