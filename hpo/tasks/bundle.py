"""A classifier task's bundle: everything a trial needs, computed once, in one file.

`write_bundle` runs the model over every split once to cache the decomposed layer's
inputs (hpo.tasks.collect; and, for a user model cut by hpo.tasks.cut, the other values
its head reads across the cut), fits and scores the references on them
(hpo.tasks.reference_scores), and stores the lot (with the model's weights) in the
content-addressed cache; `context_from_bundle` rebuilds a `ClassifierContext` from that
file alone, so a worker on another machine needs nothing else. Bundle keys hash the
source of the code that shapes them (`code_fingerprint`).
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hpo.cpus import reproducible_threads
from hpo.data.cache import save_tensors
from hpo.debias.scoring import CachedSplit
from hpo.errors import UserError
from hpo.models.classifiers import runs_from_layer
from hpo.models.head import Head
from hpo.models.layer_types import LINEAR, editable_type
from hpo.results import GroupMetrics
from hpo.tasks.classifier_context import ClassifierContext
from hpo.tasks.collect import Collected, collect_splits
from hpo.tasks.cut import Cut, carried
from hpo.tasks.reference_scores import score_references
from hpo.tasks.user import UserTask
from hpo.versions import numerics_versions


def code_fingerprint(modules: Sequence[ModuleType]) -> str:
    """A hash of the source of the modules that shape a bundle and of the versions of
    the numerical libraries: edit one or upgrade one, and cached bundles are rebuilt (no
    version constant to bump by hand)."""
    digest = hashlib.sha256(repr(sorted(numerics_versions().items())).encode())
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
    optional_references: bool = False,
) -> dict[str, float]:
    """Cache the layer inputs on every split and the references' scores, in one file.
    One torch thread (`reproducible_threads`): the references train and fit covariances.

    `collected`: the splits already collected (a streamed task's build reads them once,
    for its key). `cut`: how a user model is scored (hpo.tasks.cut); None for a built-in
    model, which runs from the layer through its own `head`. The model inputs (x) are kept
    only when scoring has to run the whole model. `optional_references`: leave out a
    reference that cannot run (the kind's default list)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = task.model.to(device).eval()
    if collected is None:
        collected = collect_splits(model, task, device, seed)
    head = cut.head if cut is not None else None
    if cut is not None:  # the other values the head reads across the cut, per split
        collected = replace(
            collected, splits={name: with_carry(s, cut) for name, s in collected.splits.items()}
        )
    probe_inputs = _head_can_change(collected.probe_inputs, head)
    timings["activations"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_references(
        model, task, collected, references, oracle, seed, head, optional=optional_references
    )
    timings["references"] = time.perf_counter() - t0
    keep_x = not runs_from_layer(model, task.layer) if cut is None else head is None
    bundle = {
        "meta": _bundle_meta(meta, task, _layer_types(model, (task.layer, *probe_inputs)), cut),
        "model": dict(model_payload),
        **({"cut": cut.payload} if cut is not None else {}),
        "splits": {name: _split_json(s, keep_x) for name, s in collected.splits.items()},
        "probe_inputs": probe_inputs,
        "references": _references_json(scores),
    }
    save_tensors(path, _cpu(bundle))
    return timings


def _head_can_change(
    probe_inputs: dict[str, torch.Tensor], head: Head | None
) -> dict[str, torch.Tensor]:
    """The later layers a trial may edit: with a head, only what it can change (the rest
    runs before the cut)."""
    if head is None:
        return probe_inputs
    return {n: v for n, v in probe_inputs.items() if f"{n}.weight" in head.overridable}


def _layer_types(model: nn.Module, layers: Sequence[str]) -> dict[str, str]:
    return {name: (editable_type(model.get_submodule(name)) or LINEAR).name for name in layers}


def _bundle_meta(
    meta: Mapping[str, Any], task: UserTask, types: dict[str, str], cut: Cut | None
) -> dict[str, Any]:
    return {
        **meta,
        "layer": task.layer,
        "group_names": list(task.group_names),
        "concept_names": list(task.concept_names),
        "layer_types": types,
        **({"cut": cut.meta()} if cut is not None else {}),
    }


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


def _references_json(
    scores: dict[str, dict[str, GroupMetrics]],
) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        name: {split: _metrics_json(m) for split, m in per_split.items()}
        for name, per_split in scores.items()
    }


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
