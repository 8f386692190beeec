"""Every split's decomposed-layer inputs, computed once for a bundle.

A split of tensors is run through the model as it always was (capped to `max_rows` by
seed); a streamed one is read batch by batch into a bounded cache (hpo.tasks.streaming).
Both give the same `CachedSplit`, so what follows (references, scoring, the bundle file)
never asks which form the data came in.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hpo.cpus import reproducible_threads
from hpo.debias.scoring import CachedSplit
from hpo.errors import UserError
from hpo.models.classifiers import runs_from_layer
from hpo.models.linear_layers import layers_from
from hpo.models.model_inputs import ModelInputs, call_model, n_samples, take, to_device
from hpo.tasks.batches import Batch, is_stream, stream_batches
from hpo.tasks.row_sampling import sample_keys, smallest
from hpo.tasks.streaming import RowPlan, StreamedSplit, sample_tokens, stream_split
from hpo.tasks.user import SPLITS, Split, UserTask

SAMPLE_SALT = 10  # + the split's index: each split draws its own rows


@torch.no_grad()
def module_inputs(
    model: nn.Module, name: str, x: ModelInputs, batch_size: int = 1024
) -> torch.Tensor:
    """What module `name` receives when `model` runs on `x` (in batches): from the model's
    own `layer_input` where it has one, else read by a forward pre-hook."""
    n = n_samples(x)
    if isinstance(x, torch.Tensor) and runs_from_layer(model, name):
        return torch.cat(
            [model.layer_input(x[i : i + batch_size], name) for i in range(0, n, batch_size)]
        )
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        for i in range(0, n, batch_size):
            before = len(captured)
            call_model(model, take(x, slice(i, i + batch_size)))
            if len(captured) - before > 1:
                raise UserError(
                    f"UserTask.layer {name!r} is called {len(captured) - before} times in one "
                    "forward pass; an edited layer must be called once (its inputs are "
                    "one set of rows)"
                )
    finally:
        handle.remove()
    if not captured:
        raise UserError(f"layer {name!r} is never called by the model's forward()")
    return torch.cat(captured)


@dataclass
class Collected:
    """Every split's cached layer inputs and labels (model inputs where kept), the
    probe inputs of the layers after the task's, two probe samples' model inputs (for
    call order and export) and, for streamed splits, the digest of what was read and
    the val inputs of the layers after the task's (DFR chooses its C on them)."""

    splits: dict[str, CachedSplit]
    probe_inputs: dict[str, torch.Tensor]
    example: ModelInputs
    digest: str | None
    val_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


@reproducible_threads()
def collect_splits(model: nn.Module, task: UserTask, device: torch.device, seed: int) -> Collected:
    """Every split's cached layer inputs: a split of tensors as it always was (capped to
    `task.max_rows` by seed), a streamed one batch by batch (hpo.tasks.streaming)."""
    model = model.to(device).eval()
    plan = RowPlan(task.max_rows, task.tokens_per_sample, seed)
    keep_x = not runs_from_layer(model, task.layer)
    digest = hashlib.sha256()
    splits: dict[str, CachedSplit] = {}
    probe_inputs: dict[str, torch.Tensor] = {}
    val_inputs: dict[str, torch.Tensor] = {}
    example: ModelInputs | None = None
    for i, name in enumerate(SPLITS):
        data = getattr(task, name)
        if not is_stream(data):
            splits[name] = cached_split(model, task.layer, data, plan, i, device)
            if name == "probe":
                probe_inputs, example = _tensor_probe(model, task.layer, splits[name], plan)
            continue
        streamed = _streamed_split(model, task, i, plan, keep_x, device, digest)
        splits[name] = streamed.split
        if name == "probe":
            probe_inputs, example = streamed.layer_inputs, streamed.example
        elif name == "val":
            val_inputs = streamed.layer_inputs
    assert example is not None
    _check_tokens_kept(task, keep_x, splits["probe"])
    streams = any(is_stream(getattr(task, n)) for n in SPLITS)
    digest_hex = digest.hexdigest() if streams else None
    return Collected(splits, probe_inputs, example, digest_hex, val_inputs)


def _tensor_probe(
    model: nn.Module, layer: str, probe: CachedSplit, plan: RowPlan
) -> tuple[dict[str, torch.Tensor], ModelInputs]:
    """A tensor probe split's inputs to the layers after `layer`, and its first two
    samples' model inputs."""
    x = probe.x
    assert x is not None
    example = take(x, slice(0, 2))
    later = layers_from(model, layer, x)[1:]
    return _tensor_probe_inputs(model, later, x, plan), example


def _streamed_split(
    model: nn.Module,
    task: UserTask,
    i: int,
    plan: RowPlan,
    keep_x: bool,
    device: torch.device,
    digest: hashlib._Hash,
) -> StreamedSplit:
    """Split `SPLITS[i]`, streamed; the probe and val splits also hook the layers after
    the task's (their call order read from the split's first batch)."""
    name = SPLITS[i]
    where = f"UserTask.{name}"
    batches = stream_batches(
        getattr(task, name),
        where,
        batch_size=task.batch_size,
        n_groups=len(task.group_names),
        n_concepts=len(task.concept_names),
        needs_concepts=name == "probe",
    )
    later: Sequence[str] = ()
    if name in ("probe", "val"):
        first, batches = _peek(batches, where)
        later = layers_from(model, task.layer, to_device(first.inputs, device))[1:]
    return stream_split(
        model,
        task.layer,
        later,
        batches,
        plan,
        salt=SAMPLE_SALT + i,
        keep_x=keep_x,
        device=device,
        digest=digest,
        where=where,
    )


def _check_tokens_kept(task: UserTask, keep_x: bool, probe: CachedSplit) -> None:
    if task.tokens_per_sample is not None and not keep_x and probe.z.dim() == 3:
        raise UserError(
            "UserTask.tokens_per_sample: the model runs from the layer (head), which needs "
            "every token of a sequence; leave it None"
        )


def _peek(batches: Iterator[Batch], where: str) -> tuple[Batch, Iterator[Batch]]:
    first = next(batches)  # stream_batches raises for an empty split
    return first, itertools.chain([first], batches)


def kept_rows(n: int, plan: RowPlan, salt: int) -> torch.Tensor | None:
    """The sample indices a split of `n` samples keeps (None: every one)."""
    if plan.max_rows is None or n <= plan.max_rows:
        return None
    return smallest(sample_keys(plan.seed, torch.arange(n), salt), plan.max_rows)


def cached_split(
    model: nn.Module, layer: str, s: Split, plan: RowPlan, i: int, device: torch.device
) -> CachedSplit:
    """A split of tensors with the decomposed layer's inputs computed once (and the
    model inputs, which scoring the references needs)."""
    keep = kept_rows(len(s), plan, SAMPLE_SALT + i)
    index = torch.arange(len(s)) if keep is None else keep

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t if keep is None else t[keep.to(t.device)]

    x = to_device(s.x if keep is None else take(s.x, keep), device)
    z = module_inputs(model, layer, x)
    return CachedSplit(
        z=sample_tokens(z, x, index, plan, f"UserTask.{SPLITS[i]}"),
        y=rows(s.y).to(device).long(),
        groups=rows(s.groups).to(device).long(),
        concepts=None if s.concepts is None else rows(s.concepts).to(device).long(),
        x=x,
    )


def _tensor_probe_inputs(
    model: nn.Module, names: Sequence[str], x: ModelInputs, plan: RowPlan
) -> dict[str, torch.Tensor]:
    index = torch.arange(n_samples(x))
    return {
        name: sample_tokens(module_inputs(model, name, x), x, index, plan, "UserTask.probe")
        for name in names
    }


def cached_splits(
    model: nn.Module, task: UserTask, device: torch.device, seed: int = 0
) -> dict[str, CachedSplit]:
    """Every split with the decomposed layer's inputs computed once (and the model
    inputs, which scoring the references needs)."""
    return collect_splits(model, task, device, seed).splits
