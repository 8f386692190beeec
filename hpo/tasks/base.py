"""What a task is, and the registry that names them.

A task turns its `[task]` section into everything a trial needs that does not depend on
the Faithful-SAE (data, a trained model, cached layer inputs, reference scores), stored
once as a *bundle* file in the content-addressed cache, so that a worker on another
machine needs only that file. Then it scores a decomposition.

A new task is one module with a config class (which names its objectives) and an object
satisfying `Task`, and one line in hpo.tasks.registry. The study-file schema, the CLI
and the outputs never ask which task they are holding.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from hpo.config import Direction, TaskConfig, TrialParams
from hpo.results import TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData

__all__ = ["Direction", "TaskConfig"]  # re-exported: a task module imports them from here

Saes = Mapping[str, FaithfulSAE]  # decomposed layer -> its Faithful-SAE, in call order


class TaskContext(Protocol):
    """What `Task.load` returns: at least these, whatever else a task keeps."""

    data_sha256: str
    bundle_key: str
    timings: dict[str, float]


class Task(Protocol):
    """One kind of task, e.g. colored MNIST. Implementations are stateless singletons."""

    kind: ClassVar[str]
    config: ClassVar[type[TaskConfig]]  # its `[task]` section; says its objectives

    def build(
        self, cfg: Any, *, data_dir: str | Path | None, device: torch.device, progress: bool
    ) -> tuple[Path, dict[str, float]]:
        """The bundle file for `cfg` (built and cached if missing), and phase timings."""
        ...

    def load(self, cfg: Any, path: Path, device: torch.device) -> TaskContext:
        """Everything a trial needs, from the bundle file alone."""
        ...

    def decomposed_layers(self, ctx: Any, params: TrialParams) -> list[str]:
        """The layers a trial with `params` decomposes, in the order the model calls them;
        a UserError naming `params.layers` and the valid names for one it cannot."""
        ...

    def sae_data(self, ctx: Any, layer: str) -> SAEData:
        """What the Faithful-SAE of `layer` trains on."""
        ...

    def evaluate(
        self,
        ctx: Any,
        saes: Saes,
        params: TrialParams,
        *,
        with_test: bool,
        removal: Mapping[str, Any] | None = None,
    ) -> TrialResult:
        """Score a decomposition (one SAE per decomposed layer) on validation, and on test
        for reporting only. `removal`: what a stored trial removed (from its weights
        payload), applied as it was rather than chosen again."""
        ...

    def edited_state_dict(
        self, ctx: Any, saes: Saes, params: TrialParams, result: TrialResult
    ) -> dict[str, torch.Tensor] | None:
        """The edited model's state dict (the base model's own keys), or None when the
        task makes no edit."""
        ...

    def model_card(self, ctx: Any) -> dict[str, str]:
        """How to describe and load the task's model: "summary", "class", "load"."""
        ...
