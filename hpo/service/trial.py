"""One trial, end to end: prepare the task (cached), train a Faithful-SAE, score it.

`run_trial` returns one `TrialResult` that every consumer reads: the CLI table, the
Optuna objective, the report and the export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from hpo.config import StudyFile, TrialParams
from hpo.data.cache import writable_cache_dir
from hpo.device import resolve_device
from hpo.results import Provenance, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import TrainResult, train_sae
from hpo.tasks.base import Saes, TaskContext
from hpo.tasks.registry import get_task
from hpo.versions import package_versions


def prepare_task(
    study: StudyFile, *, data_dir: str | Path | None, progress: bool, device: str | None = None
) -> TaskContext:
    """The task's context (its bundle built or taken from the cache), with phase timings."""
    writable_cache_dir()
    task = get_task(study.task.kind)
    dev = resolve_device(device or study.params.device)
    path, timings = task.build(study.task, data_dir=data_dir, device=dev, progress=progress)
    ctx: TaskContext = task.load(study.task, path, dev)
    load = ctx.timings.pop("load", 0.0)
    ctx.timings = {**timings, "base_model": timings.get("base_model", 0.0) + load}
    return ctx


def run_trial(
    study: StudyFile,
    ctx: TaskContext,
    params: TrialParams,
    *,
    with_test: bool,
    on_eval: Callable[[int, Saes], None] | None = None,
    progress: bool = False,
) -> tuple[TrialResult, dict[str, TrainResult]]:
    """Train one decomposition per layer the trial edits, and score them together; the
    result carries seed, checksum, versions. `on_eval` sees the last layer's training,
    with the layers before it already trained."""
    task = get_task(study.task.kind)
    trained: dict[str, TrainResult] = {}
    layers = task.decomposed_layers(ctx, params)
    for layer in layers:
        data = task.sae_data(ctx, layer)
        # `concept_latents` latents per concept: column j·k + i of the labels is concept j.
        data = replace(data, concepts=data.concepts.repeat_interleave(params.concept_latents, 1))
        done = {name: t.sae for name, t in trained.items()}

        def report(step: int, sae: FaithfulSAE, done: Saes = done, layer: str = layer) -> None:
            assert on_eval is not None
            on_eval(step, {**done, layer: sae})

        last = layer == layers[-1]
        trained[layer] = train_sae(
            data, params, on_eval=report if on_eval and last else None, progress=progress
        )
    saes = {layer: t.sae for layer, t in trained.items()}
    t0 = time.perf_counter()
    result = task.evaluate(ctx, saes, params, with_test=with_test)
    result.timings = {  # the task's own breakdown of scoring (e.g. edit, controls) too
        **ctx.timings,
        "sae_training": sum(t.seconds for t in trained.values()),
        "scoring": time.perf_counter() - t0,
        **result.timings,
    }
    result.provenance = Provenance(
        params=params.model_dump(mode="json"),
        task=study.task.model_dump(mode="json"),
        seed=params.seed,
        task_seed=study.task.seed,
        data_sha256=ctx.data_sha256,
        base_model=ctx.bundle_key,
        versions=package_versions(),
        device=str(next(iter(saes[layers[0]].parameters())).device),
        torch_threads=torch.get_num_threads(),
    )
    return result, trained


def loss_history(trained: dict[str, TrainResult]) -> dict[str, list[float]]:
    """The loss curves of every layer's training (the same steps for each); keys
    prefixed by the layer when there are several."""
    first = next(iter(trained.values())).history
    if len(trained) == 1:
        return first
    return {
        "step": first["step"],
        **{
            f"{layer}/{k}": v
            for layer, t in trained.items()
            for k, v in t.history.items()
            if k != "step"
        },
    }
