"""Which nn.Linear layers a model has, in which order its forward pass calls them, and
their inputs as rows.

An nn.Linear acts on the last dimension alone: in a transformer its input is
[batch, seq, d] and every token is one input of the layer. Decompositions and erasers
fit on `rows(inputs)`, [batch·seq, d], with each sample's labels repeated for its tokens
(`per_row`); scoring still runs the whole model on whole samples."""

from __future__ import annotations

import torch
from torch import nn

from hpo.models.model_inputs import ModelInputs, call_model, take


def linear_layers(model: nn.Module) -> list[str]:
    """The dotted names of the model's nn.Linear modules, in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def linear_call_order(model: nn.Module, x: ModelInputs) -> list[str]:
    """The nn.Linear layers `model` calls on `x[:2]`, in call order (each once). Call
    order, not definition order: a subclass may define its first layer after its head."""
    linear = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    called: list[str] = []

    def record(module: nn.Module, *_: object) -> None:
        if linear[module] not in called:
            called.append(linear[module])

    hooks = [m.register_forward_hook(record) for m in linear]
    try:
        call_model(model, take(x, slice(0, 2)))
    finally:
        for handle in hooks:
            handle.remove()
    return called


def layers_from(model: nn.Module, layer: str, x: ModelInputs) -> list[str]:
    """`layer` and every nn.Linear the model calls after it: what an edit scored from
    `layer`'s inputs can change."""
    order = linear_call_order(model, x)
    return order[order.index(layer) :] if layer in order else [layer]


def rows(inputs: torch.Tensor) -> torch.Tensor:
    """A Linear layer's inputs [N, ..., d] as rows [N·..., d] (a view where possible);
    [N, d] is returned as it is."""
    return inputs.reshape(-1, inputs.shape[-1])


def per_row(labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Per-sample `labels` ([N] or [N, m]) repeated for each of a sample's rows in
    `rows(inputs)`: every token carries its sequence's label."""
    return labels.repeat_interleave(inputs[0].numel() // inputs.shape[-1], dim=0)
