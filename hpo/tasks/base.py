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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar

import torch

from hpo.config import Direction, TaskConfig, TrialParams
from hpo.debias.edit.controlled import BudgetPoint, Replay
from hpo.results import GroupMetrics, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData

__all__ = ["BudgetPoint", "Direction", "TaskConfig"]  # re-exported for task modules

Saes = Mapping[str, FaithfulSAE]  # decomposed layer -> its Faithful-SAE, in call order


class TaskContext(Protocol):
    """What `Task.load` returns: at least these, whatever else a task keeps."""

    data_sha256: str
    bundle_key: str
    timings: dict[str, float]
    layer: str  # the task's own decomposed layer (`params.layers` may add others)

    @property
    def device(self) -> torch.device: ...


# The budgets a report draws its curve at (None: no limit).
BUDGETS: tuple[int | None, ...] = (1, 2, 4, 8, 16, 32, None)


@dataclass(frozen=True)
class ModelCard:
    """How a task describes its model in an export's README: what it is, its class,
    the Python that builds it before `load_state_dict`, and its concepts."""

    summary: str
    class_name: str
    load: str
    concept_names: tuple[str, ...] = ()
    pretrained: str | None = None  # a Hugging Face class whose from_pretrained reads hf/


ConfigT = TypeVar("ConfigT", bound=TaskConfig, contravariant=True)
ContextT = TypeVar("ContextT", bound=TaskContext)


class Task(Protocol[ConfigT, ContextT]):
    """One kind of task, e.g. colored MNIST. Implementations are stateless singletons.

    `ConfigT` is its `[task]` section (`config`); `ContextT`, what its `load` returns and
    every other method takes back: each task has its own."""

    kind: ClassVar[str]
    config: ClassVar[type[TaskConfig]]  # its `[task]` section; says its objectives

    def build(
        self, cfg: ConfigT, *, data_dir: str | Path | None, device: torch.device, progress: bool
    ) -> tuple[Path, dict[str, float]]:
        """The bundle file for `cfg` (built and cached if missing), and phase timings."""
        ...

    def load(self, cfg: ConfigT, path: Path, device: torch.device) -> ContextT:
        """Everything a trial needs, from the bundle file alone."""
        ...

    def decomposed_layers(self, ctx: ContextT, params: TrialParams) -> list[str]:
        """The layers a trial with `params` decomposes, in the order the model calls them;
        a UserError naming `params.layers` and the valid names for one it cannot."""
        ...

    def sae_data(self, ctx: ContextT, layer: str) -> SAEData:
        """What the Faithful-SAE of `layer` trains on."""
        ...

    def evaluate(
        self,
        ctx: ContextT,
        saes: Saes,
        params: TrialParams,
        *,
        with_test: bool,
        replay: Replay | None = None,
    ) -> TrialResult:
        """Score a decomposition (one SAE per decomposed layer) on validation, and on test
        for reporting only. `replay`: a stored trial's edit plans (from its weights
        payload), applied as they were rather than chosen again."""
        ...

    def edited_state_dict(
        self, ctx: ContextT, saes: Saes, params: TrialParams, result: TrialResult
    ) -> dict[str, torch.Tensor] | None:
        """The edited model's state dict (the base model's own keys), or None when the
        task makes no edit."""
        ...

    def score_state_dict(
        self, ctx: ContextT, state: Mapping[str, torch.Tensor]
    ) -> dict[str, GroupMetrics]:
        """Per split (val, test), the group metrics of the task's model loaded with
        `state` (strict) and scored from scratch: what export checks model.pt with."""
        ...

    def budget_curve(
        self, ctx: ContextT, saes: Saes, params: TrialParams, budgets: Sequence[int | None]
    ) -> dict[str, list[BudgetPoint]]:
        """Per decomposition (the SAE as "debiased", each control), the edit at each
        budget; {} for a task that makes no edit."""
        ...

    def model_card(self, ctx: ContextT) -> ModelCard:
        """How to describe and load the task's model."""
        ...

    def model_files(self, ctx: ContextT, state: Mapping[str, torch.Tensor]) -> dict[str, bytes]:
        """Files beside model.pt that load the model with `state` in its own library
        (a Hugging Face model's `save_pretrained` output), by name; {} for none."""
        ...


# A task of any kind, as the registry holds it: which config and context go with it is
# known only at run time (the study file's `[task] kind`), so the pairing is not typed.
AnyTask: TypeAlias = Task[Any, Any]
