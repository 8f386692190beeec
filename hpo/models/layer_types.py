"""The kinds of layer a decomposition can edit, behind one small protocol.

A layer is editable when it is a linear map of each of its input rows: `nn.Linear`, the
Hugging Face `Conv1D` of the GPT-2 family (the same map with its weight stored in × out),
and a 1×1 `nn.Conv2d` (the same map at every pixel). The service sees every one of them
the same way, through its `LayerType`: the weight as out × in, the edited weight written
back in the module's own layout (so the state dict keeps its keys and shapes), and the
module's inputs as rows [N·…, in]. Adding a layer type is one class and one `register`.

A bundle records each editable layer's type by name (`LayerType.name`): a worker holds
the model as a `torch.export` program, whose modules are plain containers of tensors,
so the type is read from the bundle there, never from the module's class.
"""

from __future__ import annotations

import sys
from typing import ClassVar, Protocol

import torch
from torch import nn

from hpo.registry import Registry


class LayerType(Protocol):
    """One kind of editable layer. Its methods read and write the module's tensors only
    (a program's container module works as well as the original)."""

    name: ClassVar[str]  # stored in bundles: never rename one
    label: ClassVar[str]  # how a message names it, e.g. "nn.Linear"

    def accepts(self, module: nn.Module) -> bool:
        """Whether `module` is of this type (by class: only where the class is known)."""
        ...

    def unusable(self, module: nn.Module) -> str | None:
        """Why this module, of this type, is not a linear map of its rows; None if it is."""
        ...

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The weight as out × in (a view of the module's tensor where possible)."""
        ...

    def stored(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (out × in) in the module's own layout, for its `weight` state-dict key."""
        ...

    def rows(self, inputs: torch.Tensor) -> torch.Tensor:
        """The module's inputs, as it receives them ([N, ...]), as rows [N·…, in]."""
        ...

    def reset(self, module: nn.Module) -> None:
        """Re-initialise the module's parameters as its constructor does."""
        ...


class Linear:
    """`nn.Linear`: weight out × in; it acts on the last dimension (a token per row)."""

    name: ClassVar[str] = "linear"
    label: ClassVar[str] = "nn.Linear"

    def accepts(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def unusable(self, module: nn.Module) -> str | None:
        return None

    def weight(self, module: nn.Module) -> torch.Tensor:
        return _param(module, "weight")

    def stored(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def rows(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.reshape(-1, inputs.shape[-1])

    def reset(self, module: nn.Module) -> None:
        module.reset_parameters()  # type: ignore[operator]


class HuggingFaceConv1D:
    """`transformers.pytorch_utils.Conv1D` (GPT-2's attention and MLP): y = x·W + b with
    W stored in × out; it acts on the last dimension."""

    name: ClassVar[str] = "hf_conv1d"
    label: ClassVar[str] = "transformers Conv1D"

    def accepts(self, module: nn.Module) -> bool:
        # transformers is loaded wherever one of its modules exists: never import it here
        cls = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
        return cls is not None and isinstance(module, cls)

    def unusable(self, module: nn.Module) -> str | None:
        return None

    def weight(self, module: nn.Module) -> torch.Tensor:
        return _param(module, "weight").T

    def stored(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return weight.T.contiguous()

    def rows(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.reshape(-1, inputs.shape[-1])

    def reset(self, module: nn.Module) -> None:
        with torch.no_grad():  # as Conv1D.__init__ (and GPT-2's _init_weights) does
            nn.init.normal_(_param(module, "weight"), std=0.02)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()


class PointwiseConv2d:
    """A 1×1 `nn.Conv2d` (stride 1, one group, no padding): the same linear map at every
    pixel; its input [N, C, H, W] is one row per pixel, [N·H·W, C]."""

    name: ClassVar[str] = "conv2d_1x1"
    label: ClassVar[str] = "1×1 nn.Conv2d"

    def accepts(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d)

    def unusable(self, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Conv2d)
        if tuple(module.kernel_size) != (1, 1):
            return f"its kernel is {tuple(module.kernel_size)}, not (1, 1)"
        if tuple(module.stride) != (1, 1) or module.groups != 1:
            return f"it has stride {tuple(module.stride)} and {module.groups} group(s)"
        if module.padding not in ((0, 0), 0, "valid"):
            return f"it pads its input by {module.padding}"
        return None

    def weight(self, module: nn.Module) -> torch.Tensor:
        return _param(module, "weight").flatten(1)

    def stored(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(*weight.shape, 1, 1)

    def rows(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.movedim(1, -1).reshape(-1, inputs.shape[1])

    def reset(self, module: nn.Module) -> None:
        module.reset_parameters()  # type: ignore[operator]


LAYER_TYPES: Registry[LayerType] = Registry("layer type")
for _type in (Linear(), HuggingFaceConv1D(), PointwiseConv2d()):
    LAYER_TYPES.register(_type.name, _type)
LINEAR: LayerType = LAYER_TYPES["linear"]


def layer_type_of(module: nn.Module) -> LayerType | None:
    """The registered type `module` is, whether or not this module of it can be edited."""
    return next((t for _, t in LAYER_TYPES.items() if t.accepts(module)), None)


def editable_type(module: nn.Module) -> LayerType | None:
    """The type of `module` if it is an editable layer (a linear map of its rows)."""
    kind = layer_type_of(module)
    return kind if kind is not None and kind.unusable(module) is None else None


def supported() -> str:
    """The editable layer types, for a message: "nn.Linear, transformers Conv1D, ..."."""
    return ", ".join(t.label for _, t in LAYER_TYPES.items())


def weight_override(
    kind: LayerType, module: nn.Module, layer: str, weight: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{state-dict key: tensor} that gives layer `layer` the weight `weight` (out × in)."""
    return {f"{layer}.weight": kind.stored(module, weight)}


def _param(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no tensor {name!r}")
    return value
