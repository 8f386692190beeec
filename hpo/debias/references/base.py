"""What a reference method is: `fit(source) -> Fitted`, and what it may fit on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from hpo.debias.scoring import CachedSplit, Overrides
from hpo.models.head import Head
from hpo.models.model_inputs import ModelInputs


@dataclass
class ReferenceSource:
    """What a reference may fit on: the model, its decomposed layer, the probe split
    (with model inputs), a way to read any module's inputs on it, the task's oracle, the
    model from the layer on where one was found for a user model (hpo.models.head), and
    `val` (with model inputs) for a reference that chooses a hyperparameter there, as
    every edit chooses its α."""

    model: nn.Module
    layer: str
    probe: CachedSplit
    inputs_of: Callable[[str, ModelInputs], torch.Tensor]  # (module name, x) -> its input
    oracle: nn.Module | None
    seed: int
    head: Head | None = None
    val: CachedSplit | None = None
    # (module name) -> its inputs on `val`, None where they are not known (a streamed
    # task keeps only the decomposed layer's); None: read them from val's model inputs
    val_inputs_of: Callable[[str], torch.Tensor | None] | None = None

    def val_inputs(self, name: str) -> torch.Tensor | None:
        """Module `name`'s inputs on the val split, None where they cannot be had."""
        if self.val is None:
            return None
        if self.val_inputs_of is not None:
            return self.val_inputs_of(name)
        return None if self.val.x is None else self.inputs_of(name, self.val.x)


@dataclass
class Fitted:
    """A fitted reference: parameter overrides of the base model, or a whole model."""

    overrides: Overrides | None = None
    model: nn.Module | None = None


class CannotRun(Exception):
    """Raised by `fit` where a reference finds out only while fitting that it cannot run
    on this source (what `unavailable` checked on a sample held, the whole split did
    not); the message says why, as `unavailable`'s answer does."""


class Reference(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]

    def unavailable(self, source: ReferenceSource) -> str | None:
        """Why this reference cannot run on `source`, or None if it can."""
        ...

    def fit(self, source: ReferenceSource) -> Fitted:
        """The fitted reference; raises CannotRun where it cannot run after all."""
        ...
