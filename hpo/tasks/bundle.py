"""A classifier task's bundle: everything a trial needs, computed once, in one file.

`write_bundle` runs the model over every split once to cache the decomposed layer's
inputs (and, for a user model cut by hpo.tasks.cut, the other values its head reads
across the cut), fits and scores the references on them, and stores the lot (with the
model's weights) in the content-addressed cache; `context_from_bundle` rebuilds a
`ClassifierContext` from that file alone, so a worker on another machine needs nothing
else. Bundle keys hash the source of the code that shapes them (`code_fingerprint`).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hpo.cpus import reproducible_threads
from hpo.data.cache import save_tensors
from hpo.debias.edit.controlled import ControlCache
from hpo.debias.edit.target import EditTarget
from hpo.debias.references import REFERENCES, Fitted, ReferenceSource
from hpo.debias.scoring import CachedSplit, Scorer
from hpo.errors import UserError
from hpo.models.classifiers import runs_from_layer
from hpo.models.head import Head
from hpo.models.layer_types import LAYER_TYPES, LINEAR, editable_type
from hpo.models.linear_layers import layers_from
from hpo.models.model_inputs import ModelInputs, call_model, n_samples, take, to_device
from hpo.results import GroupMetrics
from hpo.tasks.batches import Batch, is_stream, stream_batches
from hpo.tasks.cut import Cut, carried
from hpo.tasks.row_sampling import sample_keys, smallest
from hpo.tasks.streaming import RowPlan, sample_tokens, stream_split
from hpo.tasks.user import SPLITS, Split, UserTask

EVAL_SPLITS = ("val", "test")


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


def code_fingerprint(modules: Sequence[ModuleType]) -> str:
    """A hash of the source of the modules that shape a bundle: edit one, and cached
    bundles are rebuilt (no version constant to bump by hand)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def tensor_digest(tensors: Sequence[torch.Tensor | None]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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


def check_references(names: Sequence[str], can_train_oracle: bool, kind: str) -> None:
    for name in names:
        if name not in REFERENCES:
            raise ValueError(f"unknown reference {name!r}; valid: {', '.join(REFERENCES)}")
        if name == "oracle" and not can_train_oracle:
            raise ValueError(f"task kind {kind} cannot train an oracle; remove 'oracle'")


@dataclass
class Collected:
    """Every split's cached layer inputs and labels (model inputs where kept), the
    probe inputs of the layers after the task's, two probe samples' model inputs (for
    call order and export) and, for streamed splits, the digest of what was read."""

    splits: dict[str, CachedSplit]
    probe_inputs: dict[str, torch.Tensor]
    example: ModelInputs
    digest: str | None


@reproducible_threads()
def write_bundle(
    path: Path,
    task: UserTask,
    *,
    references: Sequence[str],
    oracle: nn.Module | None,
    seed: int,
    meta: Mapping[str, Any],
    model_payload: Mapping[str, Any],
    device: torch.device,
    collected: Collected | None = None,
    cut: Cut | None = None,
) -> dict[str, float]:
    """Cache the layer inputs on every split and the references' scores, in one file.
    One torch thread (`reproducible_threads`): the references train and fit covariances.

    `collected`: the splits already collected (a streamed task's build reads them once,
    for its key). `cut`: how a user model is scored (hpo.tasks.cut); None for a built-in
    model, which runs from the layer through its own `head`. The model inputs (x) are kept
    only when scoring has to run the whole model; else the cached values alone score
    every edit.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = task.model.to(device).eval()
    if collected is None:
        collected = collect_splits(model, task, device, seed)
    full, probe_inputs = collected.splits, collected.probe_inputs
    head = cut.head if cut is not None else None
    if cut is not None:  # the other values the head reads across the cut, per split
        full = {name: with_carry(s, cut) for name, s in full.items()}
        collected = replace(collected, splits=full)
    if head is not None:  # only what the head can change: the rest runs before the cut
        probe_inputs = {n: v for n, v in probe_inputs.items() if f"{n}.weight" in head.overridable}
    later = list(probe_inputs)
    timings["activations"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_references(model, task, collected, references, oracle, seed, head)
    timings["references"] = time.perf_counter() - t0
    keep_x = not runs_from_layer(model, task.layer) if cut is None else head is None
    types = {
        name: (editable_type(model.get_submodule(name)) or LINEAR).name
        for name in (task.layer, *later)
    }
    bundle = {
        "meta": {
            **meta,
            "layer": task.layer,
            "group_names": list(task.group_names),
            "concept_names": list(task.concept_names),
            "layer_types": types,
            **({"cut": cut.meta()} if cut is not None else {}),
        },
        "model": dict(model_payload),
        **({"cut": cut.payload} if cut is not None else {}),
        "splits": {name: _split_json(s, keep_x) for name, s in full.items()},
        "probe_inputs": probe_inputs,
        "references": {
            name: {split: _metrics_json(m) for split, m in per_split.items()}
            for name, per_split in scores.items()
        },
    }
    save_tensors(path, _cpu(bundle))
    return timings


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
    example: ModelInputs | None = None
    for i, name in enumerate(SPLITS):
        data = getattr(task, name)
        where = f"UserTask.{name}"
        if not is_stream(data):
            splits[name] = cached_split(model, task.layer, data, plan, i, device)
            if name == "probe":
                x = splits[name].x
                assert x is not None
                example = take(x, slice(0, 2))
                later = layers_from(model, task.layer, x)[1:]
                probe_inputs = _tensor_probe_inputs(model, later, x, plan)
            continue
        batches = stream_batches(
            data,
            where,
            batch_size=task.batch_size,
            n_groups=len(task.group_names),
            n_concepts=len(task.concept_names),
            needs_concepts=name == "probe",
        )
        if name == "probe":
            first, batches = _peek(batches, where)
            later = layers_from(model, task.layer, to_device(first.inputs, device))[1:]
        streamed = stream_split(
            model,
            task.layer,
            later if name == "probe" else (),
            batches,
            plan,
            salt=SAMPLE_SALT + i,
            keep_x=keep_x,
            device=device,
            digest=digest,
            where=where,
        )
        splits[name] = streamed.split
        if name == "probe":
            probe_inputs, example = streamed.layer_inputs, streamed.example
    assert example is not None
    if task.tokens_per_sample is not None and not keep_x and splits["probe"].z.dim() == 3:
        raise UserError(
            "UserTask.tokens_per_sample: the model runs from the layer (head), which needs "
            "every token of a sequence; leave it None"
        )
    streams = any(is_stream(getattr(task, n)) for n in SPLITS)
    return Collected(splits, probe_inputs, example, digest.hexdigest() if streams else None)


SAMPLE_SALT = 10  # + the split's index: each split draws its own rows


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


def with_carry(s: CachedSplit, cut: Cut) -> CachedSplit:
    """The split with the values its head reads across the cut, from its model inputs."""
    if s.x is None:
        raise UserError(
            "UserTask: a model scored from its cut needs each split's model inputs; a "
            "streamed split kept none"
        )
    return replace(s, carry=carried(cut, s.x))


def _split_json(s: CachedSplit, keep_x: bool) -> dict[str, Any]:
    """What the bundle stores of a split: the model inputs only where scoring must run
    the whole model."""
    return {
        "z": s.z,
        "y": s.y,
        "groups": s.groups,
        **({"concepts": s.concepts} if s.concepts is not None else {}),
        **({"x": s.x} if keep_x and s.x is not None else {}),
        **({"carry": s.carry} if s.carry else {}),
    }


def score_references(
    model: nn.Module,
    task: UserTask,
    collected: Collected,
    names: Sequence[str],
    oracle: nn.Module | None,
    seed: int,
    head: Head | None = None,
) -> dict[str, dict[str, GroupMetrics]]:
    """original plus each named reference, on val and test (with model inputs: a
    built-in model is scored whole here, a user model from its head where it has one)."""
    splits = collected.splits
    scorer = Scorer(model, task.layer, splits, task.group_names, head=head)
    out = {"original": {s: scorer.metrics(s) for s in EVAL_SPLITS}}
    probe = splits["probe"]
    if probe.x is None:  # streamed, scored from the layer: its inputs were collected
        known = {task.layer: probe.z, **collected.probe_inputs}
        probe = replace(probe, x=collected.example)

        def inputs_of(name: str, x: ModelInputs) -> torch.Tensor:
            return known[name]
    else:

        def inputs_of(name: str, x: ModelInputs) -> torch.Tensor:
            return module_inputs(model, name, x)

    source = ReferenceSource(
        model=model,
        layer=task.layer,
        probe=probe,
        inputs_of=inputs_of,
        oracle=oracle,
        seed=seed,
        val=splits["val"],
        head=head,
    )
    for name in names:
        method = REFERENCES[name]
        why = method.unavailable(source)
        if why is not None:
            raise UserError(f"task.references: {name} cannot run here: {why}")
        fitted = method.fit(source)
        out[name] = {s: _score_fitted(fitted, scorer, task, splits, s) for s in EVAL_SPLITS}
    return out


def _score_fitted(
    fitted: Fitted, scorer: Scorer, task: UserTask, splits: dict[str, CachedSplit], split: str
) -> GroupMetrics:
    if fitted.model is None:
        return scorer.metrics(split, fitted.overrides)
    other = Scorer(fitted.model.eval(), task.layer, splits, task.group_names)
    return other.metrics(split)


def _metrics_json(m: GroupMetrics) -> dict[str, Any]:
    return {
        "worst_group": m.worst_group,
        "mean_group": m.mean_group,
        "overall": m.overall,
        "groups": m.groups,
    }


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    return obj


def context_from_bundle(
    bundle: dict[str, Any],
    model: nn.Module,
    path: Path,
    card: dict[str, str],
    head: Head | None = None,
) -> ClassifierContext:
    meta = bundle["meta"]
    splits = {name: CachedSplit(**d) for name, d in bundle["splits"].items()}
    return ClassifierContext(
        model=model,  # in eval mode: built-in models are put there, programs are captured so
        layer=meta["layer"],
        splits=splits,
        group_names=tuple(meta["group_names"]),
        concept_names=tuple(meta["concept_names"]),
        references={
            name: {s: GroupMetrics.from_json(m) for s, m in per_split.items()}
            for name, per_split in bundle["references"].items()
        },
        data_sha256=meta["data_sha256"],
        bundle_key=meta["key"],
        bundle_path=path,
        card=card,
        probe_inputs=dict(bundle.get("probe_inputs", {})),  # older bundles: the layer only
        head=head,
        layer_types=dict(meta.get("layer_types", {})),
        pretrained=meta.get("hf"),
    )
