"""The model from its decomposed layer on, run from cached values: what scoring runs.

Every fit step and every α of a trial scores the model with a few tensors replaced.
Rerunning the whole model on the raw inputs each time repeats the trunk, which no edit
changes; a `Head` starts from the values a bundle cached at the cut instead (the layer's
input, and whatever else the rest of the model reads from before it) and takes the
replaced tensors by the base model's own state-dict keys.

A head is a module plus how to call it: which cached values it takes, in which order,
which of the base model's tensors it may replace (`overridable`: those only the head
reads), and the prefix its own parameter names carry. hpo.models.graph_split finds one
in any exported model; a user may also hand one over (`UserTask.head`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from hpo.models.graph_split import LAYER_INPUT

Values = Mapping[str, torch.Tensor]  # value name -> one row per sample ([N, ...])
Overrides = Mapping[str, torch.Tensor]  # base model state-dict key -> replacement


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, a Hugging Face ModelOutput's
    (or a mapping's) `logits`, or a tuple's first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        from_mapping: torch.Tensor = output["logits"]
        return from_mapping
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the logits in a {type(output).__name__}")


def logits_only(model: nn.Module) -> nn.Module:
    """`model` itself where its forward returns a tensor; else a twin sharing its modules
    and parameters (so the same state-dict keys) whose forward returns the logits alone:
    what is exported, so that a worker needs none of the output's classes (a Hugging Face
    ModelOutput would need transformers to be deserialized)."""
    cls = type(model)

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # one input, as exported
        return logits_of(cls.forward(self, x))

    twin = copy.copy(model)  # shallow: the same submodules, parameters and buffers
    twin.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return twin


@dataclass(frozen=True)
class Head:
    """`module(*values)` = the model's logits, from the cached `inputs` (in that order;
    `LAYER_INPUT` is the layer's input). `source` says where it came from, for messages."""

    module: nn.Module
    inputs: tuple[str, ...]
    overridable: frozenset[str]
    source: str
    prefix: str = ""  # the module's name for base-model key k is prefix + k
    batch_size: int = 4096  # samples per call: memory bounded on large splits

    def takes(self, overrides: Overrides) -> bool:
        """Whether replacing these tensors in the head is replacing them in the model."""
        return all(k in self.overridable for k in overrides)

    def __call__(self, values: Values, overrides: Overrides | None = None) -> torch.Tensor:
        swapped = {self.prefix + k: v for k, v in (overrides or {}).items()}
        args = [values[name] for name in self.inputs]
        n = len(values[LAYER_INPUT])
        if n <= self.batch_size:
            out: torch.Tensor = functional_call(self.module, swapped, tuple(args))
            return out
        return torch.cat(
            [
                functional_call(
                    self.module, swapped, tuple(a[i : i + self.batch_size] for a in args)
                )
                for i in range(0, n, self.batch_size)
            ]
        )

    def parameters(self) -> dict[str, torch.Tensor]:
        """The head's overridable tensors, by the base model's keys."""
        own = dict(self.module.named_parameters()) | dict(self.module.named_buffers())
        return {k: own[self.prefix + k] for k in sorted(self.overridable) if self.prefix + k in own}


class UserHeadModule(nn.Module):
    """`UserTask.head` as a module over the base model (registered as `model`, so that
    its parameters are the model's, named "model.<key>"): what is exported and checked."""

    def __init__(self, model: nn.Module, head: Any) -> None:
        super().__init__()
        self.model = model
        self._head = head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return logits_of(self._head(z))
