"""`ClassifierContext`: what a trial on a classifier task works with, rebuilt from the
task's bundle (hpo.tasks.bundle) so a worker needs nothing else.

It holds the model, the cached splits and the references' scores, and builds once the
scorer and the edit target every trial of the task shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hpo.debias.edit.controlled import ControlCache
from hpo.debias.edit.target import EditTarget
from hpo.debias.scoring import CachedSplit, Scorer
from hpo.models.head import Head
from hpo.models.layer_types import LAYER_TYPES
from hpo.results import GroupMetrics


@dataclass
class ClassifierContext:
    """Everything a trial on a classifier task needs, rebuilt from its bundle."""

    model: nn.Module
    layer: str
    splits: dict[str, CachedSplit]
    group_names: tuple[str, ...]
    concept_names: tuple[str, ...]
    references: dict[str, dict[str, GroupMetrics]]  # name -> split -> metrics
    data_sha256: str
    bundle_key: str
    bundle_path: Path
    card: dict[str, str]
    # The layers a trial may edit (`layer` and every editable layer called after it that
    # the scorer can change, in call order) and their inputs on the probe split, which
    # their decompositions train on.
    probe_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # The model from `layer` on, for a user model (hpo.tasks.cut); None: the built-in
    # model's own head, or the whole model.
    head: Head | None = None
    layer_types: dict[str, str] = field(default_factory=dict)  # layer -> LayerType.name
    # A Hugging Face model's class and config (hpo.tasks.hugging_face): export writes
    # its save_pretrained output too.
    pretrained: dict[str, str] | None = None
    scorer: Scorer = field(init=False)
    edit_target: EditTarget = field(init=False)
    # The controls' scored edits of the last few configurations: they do not depend on
    # the trained SAE (hpo.debias.edit.controlled).
    control_cache: ControlCache = field(default_factory=ControlCache, repr=False)

    def __post_init__(self) -> None:
        self.scorer = Scorer(self.model, self.layer, self.splits, self.group_names, head=self.head)
        self.probe_inputs = {self.layer: self.splits["probe"].z, **self.probe_inputs}
        self.edit_target = EditTarget(
            self.model,
            self.scorer,
            self.probe_inputs,
            len(self.concept_names),
            layer_types={k: LAYER_TYPES[v] for k, v in self.layer_types.items()},
        )

    @property
    def editable_layers(self) -> tuple[str, ...]:
        return tuple(self.probe_inputs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def weight_of(self, layer: str) -> torch.Tensor:
        """The layer's weight, out × in, whatever its type stores."""
        return self.edit_target.layer_type(layer).weight(self.model.get_submodule(layer))
