"""The public API for debiasing your own model: `UserTask` and `Split`.

A study file names a factory (`[task] kind = "python"`, `factory = "module:function"`),
which is called as `factory(seed=..., **options)` and returns a `UserTask`: a trained
model, the dotted name of one editable layer inside it (an `nn.Linear`, a Hugging Face
`Conv1D` or a 1×1 `nn.Conv2d`), and three labelled splits, each a `Split` of tensors or a
Dataset / DataLoader that streams (hpo.tasks.batches). Everything else (caching,
references, the Faithful-SAE, the α sweep, the study, export) is the service's.
`validate_user_task` turns every mistake into one sentence naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hpo.errors import UserError
from hpo.models.layer_types import editable_type, layer_type_of, supported
from hpo.tasks.batches import CONTRACT, Stream, is_stream


@dataclass(frozen=True)
class Split:
    """One split of labelled data.

    x: model inputs, a tensor whose first dimension is the sample (any shape after it).
    y: integer class labels, shape [N].
    groups: integer group ids in [0, len(group_names)), shape [N]: worst-group accuracy
        is the lowest accuracy over these groups.
    concepts: integer labels of the spurious attribute in [0, len(concept_names)),
        shape [N]; required on `probe` (the Faithful-SAE is conditioned on them and the
        references are fitted with them), optional elsewhere.
    """

    x: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor
    concepts: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class UserTask:
    """A trained model, the layer to decompose, and the data to debias it with.

    model: a trained `torch.nn.Module` (any architecture); it is put in eval mode.
    layer: dotted name of an editable layer inside it (as in `model.named_modules()`),
        e.g. "head.0": an `nn.Linear`, a Hugging Face `Conv1D` (GPT-2's MLP and
        attention) or a 1×1 `nn.Conv2d`; it may feed a nonlinearity or be the last layer.
    probe: balanced data the decomposition and the references are fitted on; needs
        `concepts`.
    val: balanced data every hyperparameter and α is chosen on.
    test: held-out data, only ever reported.
        Each split is a `Split` of tensors, or a `torch.utils.data.Dataset` or
        `DataLoader` whose items / batches are dicts of inputs, y, groups, concepts
        (hpo.tasks.batches): read batch by batch, and only the layer inputs of the rows
        kept are cached.
    group_names: one name per group id (at least two).
    concept_names: one name per concept label (at least two).
    max_rows: at most this many samples cached per split (None: all), drawn
        reproducibly by the task's seed; what bounds a large data set's memory.
    tokens_per_sample: where the layer sees sequences, the SAE and the references keep
        this many tokens of each sample (its real tokens: `attention_mask` where the
        inputs have one), drawn by seed (None: every token). Needs whole-model scoring.
    batch_size: how many items of a Dataset split run through the model at once.
    head: optional; a function from `layer`'s input (as the layer receives it) to the
        model's logits, through the model's own modules. The service finds the model
        from `layer` on by itself (a graph split of the exported model); give `head`
        where that split fails and the layer's input is all the rest of the model needs.
        It is checked once against the whole model on probe rows.
    """

    model: nn.Module
    layer: str
    probe: SplitData
    val: SplitData
    test: SplitData
    group_names: Sequence[str] = field(default_factory=tuple)
    concept_names: Sequence[str] = field(default_factory=tuple)
    max_rows: int | None = None
    tokens_per_sample: int | None = None
    batch_size: int = 256
    head: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def streams(self) -> bool:
        """Whether any split is a Dataset or DataLoader."""
        return any(is_stream(getattr(self, name)) for name in SPLITS)


SplitData = Split | Stream
SPLITS = ("probe", "val", "test")


def validate_user_task(task: Any, source: str) -> UserTask:
    """`task` if it is a usable UserTask; else a UserError naming `source` and the field."""
    if not isinstance(task, UserTask):
        raise UserError(
            f"{source}: returned {type(task).__name__}, expected hpo.UserTask "
            "(from hpo import UserTask, Split)"
        )
    if not isinstance(task.model, nn.Module):
        raise UserError(
            f"{source}: UserTask.model is {type(task.model).__name__}, expected a torch.nn.Module"
        )
    _check_layer(task, source)
    if task.head is not None and not callable(task.head):
        raise UserError(
            f"{source}: UserTask.head is {type(task.head).__name__}, expected a function "
            "from the layer's input to the logits (or None)"
        )
    n_groups, n_concepts = len(task.group_names), len(task.concept_names)
    if n_groups < 2:
        raise UserError(
            f"{source}: UserTask.group_names has {n_groups} name(s); worst-group accuracy "
            "needs at least two groups"
        )
    if n_concepts < 2:
        raise UserError(
            f"{source}: UserTask.concept_names has {n_concepts} name(s); give one name per "
            "value of the spurious attribute (at least two)"
        )
    for attr in ("max_rows", "tokens_per_sample", "batch_size"):
        value = getattr(task, attr)
        if not (value is None and attr != "batch_size") and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise UserError(f"{source}: UserTask.{attr} is {value!r}; expected an int >= 1")
    for name in SPLITS:
        _check_split(getattr(task, name), name, n_groups, n_concepts, source)
    return task


def _check_layer(task: UserTask, source: str) -> None:
    """`task.layer` names a module of the model that is an editable layer."""
    modules = dict(task.model.named_modules())
    editable = [n for n, m in modules.items() if editable_type(m) is not None]
    listing = f"its editable layers: {', '.join(editable) or 'none'}"
    if task.layer not in modules:
        raise UserError(
            f"{source}: UserTask.layer {task.layer!r} is not a module of "
            f"{type(task.model).__name__}; {listing}"
        )
    module = modules[task.layer]
    kind = layer_type_of(module)
    if kind is None:
        raise UserError(
            f"{source}: UserTask.layer {task.layer!r} is a {type(module).__name__}, not a "
            f"layer the service can edit ({supported()}); {listing}"
        )
    why = kind.unusable(module)
    if why is not None:
        raise UserError(
            f"{source}: UserTask.layer {task.layer!r} is a {kind.label} but {why}: only a "
            f"linear map of each input row can be edited ({supported()}); {listing}"
        )


def _check_split(split: Any, name: str, n_groups: int, n_concepts: int, source: str) -> None:
    where = f"{source}: UserTask.{name}"
    if is_stream(split):
        return  # its batches are checked as they are read (hpo.tasks.batches)
    if not isinstance(split, Split):
        raise UserError(
            f"{where} is {type(split).__name__}, expected hpo.Split, a torch Dataset or a "
            f"DataLoader ({CONTRACT})"
        )
    for attr in ("x", "y", "groups", "concepts"):
        value = getattr(split, attr)
        if value is None and attr == "concepts":
            continue
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where}.{attr} is {type(value).__name__}, expected a torch.Tensor")
    n = len(split.x)
    if n == 0:
        raise UserError(f"{where} is empty")
    for attr in ("y", "groups", "concepts"):
        value = getattr(split, attr)
        if value is None:
            continue
        if value.dim() != 1 or len(value) != n:
            raise UserError(
                f"{where}.{attr} has shape {tuple(value.shape)} but {name}.x has {n} samples; "
                f"expected shape ({n},)"
            )
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise UserError(f"{where}.{attr} has dtype {value.dtype}; expected integer labels")
    _check_range(split.groups, n_groups, f"{where}.groups", "group_names")
    if split.concepts is not None:
        _check_range(split.concepts, n_concepts, f"{where}.concepts", "concept_names")
    elif name == "probe":
        raise UserError(
            f"{where}.concepts is missing; the probe split needs the spurious attribute's "
            "labels (Split(x, y, groups, concepts))"
        )


def _check_range(values: torch.Tensor, n: int, where: str, names: str) -> None:
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= n:
        raise UserError(f"{where} has values {lo}..{hi}; expected 0..{n - 1} (one per {names})")
