"""The references a bundle stores beside the base model: fitted once, scored on val and
test, so every trial compares against the same numbers without refitting them.

Which references a task may name is checked here too (`check_references`), against the
registry in hpo.debias.references, when the study file is read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

import torch
from pydantic import BaseModel
from torch import nn

from hpo.debias.references import REFERENCES, CannotRun, Fitted, ReferenceSource
from hpo.debias.scoring import CachedSplit, Scorer
from hpo.errors import UserError
from hpo.models.head import Head
from hpo.models.model_inputs import ModelInputs
from hpo.results import GroupMetrics
from hpo.tasks.collect import Collected, module_inputs
from hpo.tasks.user import UserTask

EVAL_SPLITS = ("val", "test")


def check_references(names: Sequence[str], can_train_oracle: bool, kind: str) -> None:
    for name in names:
        if name not in REFERENCES:
            raise ValueError(f"unknown reference {name!r}; valid: {', '.join(REFERENCES)}")
        if name == "oracle" and not can_train_oracle:
            raise ValueError(f"task kind {kind} cannot train an oracle; remove 'oracle'")


def references_optional(cfg: BaseModel) -> bool:
    """Whether a task's `references` is its kind's default list (not named in the study
    file): then one that cannot run on the model is left out rather than an error."""
    return "references" not in cfg.model_fields_set


def score_references(
    model: nn.Module,
    task: UserTask,
    collected: Collected,
    names: Sequence[str],
    oracle: nn.Module | None,
    seed: int,
    head: Head | None = None,
    *,
    optional: bool = False,
) -> dict[str, dict[str, GroupMetrics]]:
    """original plus each named reference, on val and test (with model inputs: a
    built-in model is scored whole here, a user model from its head where it has one).

    A reference that cannot run on this model is an error where the study file named
    it; with `optional` (the task kind's default list) it is left out, with a note."""
    splits = collected.splits
    scorer = Scorer(model, task.layer, splits, task.group_names, head=head)
    out = {"original": {s: scorer.metrics(s) for s in EVAL_SPLITS}}
    source = _reference_source(model, task, collected, oracle, seed, head)
    for name in names:
        method = REFERENCES[name]
        why = method.unavailable(source)
        try:
            fitted = method.fit(source) if why is None else None
        except CannotRun as e:
            why = str(e)
            fitted = None
        if fitted is None:
            _left_out(name, str(why), optional)
            continue
        out[name] = {s: _score_fitted(fitted, scorer, task, splits, s) for s in EVAL_SPLITS}
    return out


def _left_out(name: str, why: str, optional: bool) -> None:
    """A note where the reference was optional, else the error naming the setting."""
    if not optional:
        raise UserError(f"task.references: {name} cannot run here: {why}")
    print(f"note: reference {name} left out: {why}", file=sys.stderr, flush=True)


def _reference_source(
    model: nn.Module,
    task: UserTask,
    collected: Collected,
    oracle: nn.Module | None,
    seed: int,
    head: Head | None,
) -> ReferenceSource:
    """What the references fit on: probe (and val) with a way to read any module's
    inputs, from the model or, for a streamed split, from what was collected."""
    splits = collected.splits
    probe, val = splits["probe"], splits["val"]
    val_inputs_of = None
    if probe.x is None:  # streamed, scored from the layer: its inputs were collected
        known = {task.layer: probe.z, **collected.probe_inputs}
        probe = replace(probe, x=collected.example)

        def inputs_of(name: str, x: ModelInputs) -> torch.Tensor:
            return known[name]

        def val_inputs_of(name: str) -> torch.Tensor | None:
            return val.z if name == task.layer else collected.val_inputs.get(name)
    else:

        def inputs_of(name: str, x: ModelInputs) -> torch.Tensor:
            return module_inputs(model, name, x)

    return ReferenceSource(
        model=model,
        layer=task.layer,
        probe=probe,
        inputs_of=inputs_of,
        oracle=oracle,
        seed=seed,
        val=val,
        head=head,
        val_inputs_of=val_inputs_of,
    )


def _score_fitted(
    fitted: Fitted, scorer: Scorer, task: UserTask, splits: dict[str, CachedSplit], split: str
) -> GroupMetrics:
    if fitted.model is None:
        return scorer.metrics(split, fitted.overrides)
    other = Scorer(fitted.model.eval(), task.layer, splits, task.group_names)
    return other.metrics(split)
