"""Which editable layers a model has, in which order its forward pass calls them, and
their inputs as rows.

An editable layer (hpo.models.layer_types: nn.Linear, transformers Conv1D, a 1×1
Conv2d) is a linear map of each row of its input: in a transformer its input is
[batch, seq, d] and every token is one row; a 1×1 convolution's input [batch, C, H, W]
is a row per pixel. Decompositions and erasers fit on the rows, [batch·…, in], with each
sample's labels repeated for its rows (`per_row`)."""

from __future__ import annotations

import torch
from torch import nn

from hpo.models.layer_types import LINEAR, LayerType, editable_type
from hpo.models.model_inputs import ModelInputs, call_model, take


def linear_layers(model: nn.Module) -> list[str]:
    """The dotted names of the model's nn.Linear modules, in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def editable_layers(model: nn.Module) -> dict[str, LayerType]:
    """The model's editable layers (any registered layer type), in definition order."""
    found = {n: editable_type(m) for n, m in model.named_modules()}
    return {n: t for n, t in found.items() if t is not None}


@torch.no_grad()
def linear_call_order(model: nn.Module, x: ModelInputs) -> list[str]:
    """The editable layers `model` calls on `x[:2]`, in call order (each once). Call
    order, not definition order: a subclass may define its first layer after its head."""
    editable = set(editable_layers(model))
    names = {m: n for n, m in model.named_modules() if n in editable}
    called: list[str] = []

    def record(module: nn.Module, *_: object) -> None:
        if names[module] not in called:
            called.append(names[module])

    hooks = [m.register_forward_hook(record) for m in names]
    try:
        call_model(model, take(x, slice(0, 2)))
    finally:
        for handle in hooks:
            handle.remove()
    return called


def layers_from(model: nn.Module, layer: str, x: ModelInputs) -> list[str]:
    """`layer` and every editable layer the model calls after it: what an edit scored
    from `layer`'s inputs can change."""
    order = linear_call_order(model, x)
    return order[order.index(layer) :] if layer in order else [layer]


def rows(inputs: torch.Tensor, kind: LayerType = LINEAR) -> torch.Tensor:
    """A layer's inputs [N, ...] as rows [N·..., in] (a view where possible); an
    nn.Linear's [N, d] is returned as it is."""
    return kind.rows(inputs)


def per_row(labels: torch.Tensor, inputs: torch.Tensor, kind: LayerType = LINEAR) -> torch.Tensor:
    """Per-sample `labels` ([N] or [N, m]) repeated for each of a sample's rows in
    `rows(inputs, kind)`: every token (or pixel) carries its sample's label."""
    return labels.repeat_interleave(len(kind.rows(inputs[:1])), dim=0)
