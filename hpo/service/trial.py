"""One trial, end to end: prepare the task (cached), train a Faithful-SAE, score it.

`run_trial` returns one result mapping that every consumer reads: the CLI table, the
Optuna objective, the report and the export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hpo.config import StudyFile, TrialParams
from hpo.device import resolve_device
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import TrainResult, train_sae
from hpo.tasks import TASKS
from hpo.versions import package_versions


def prepare_task(
    study: StudyFile, *, data_dir: str | Path | None, progress: bool, device: str | None = None
) -> Any:
    dev = resolve_device(device or study.params.device)
    return TASKS[study.task.kind].prepare(
        study.task, data_dir=data_dir, device=dev, progress=progress
    )


def train(
    study: StudyFile,
    ctx: Any,
    params: TrialParams,
    *,
    on_eval: Callable[[int, FaithfulSAE], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    data = TASKS[study.task.kind].sae_data(ctx)
    return train_sae(data, params, on_eval=on_eval, progress=progress)


def score(
    study: StudyFile, ctx: Any, sae: FaithfulSAE, params: TrialParams, *, with_test: bool
) -> dict[str, Any]:
    return TASKS[study.task.kind].evaluate(ctx, sae, params, with_test=with_test)


def run_trial(
    study: StudyFile,
    ctx: Any,
    params: TrialParams,
    *,
    with_test: bool,
    on_eval: Callable[[int, FaithfulSAE], None] | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], TrainResult]:
    """Train and score one decomposition; the result carries seed, checksum, versions."""
    trained = train(study, ctx, params, on_eval=on_eval, progress=progress)
    t0 = time.perf_counter()
    metrics = score(study, ctx, trained.sae, params, with_test=with_test)
    timings = {**ctx.timings, "sae_training": trained.seconds, "scoring": time.perf_counter() - t0}
    result = {
        "params": params.model_dump(mode="json"),
        "task": study.task.model_dump(mode="json"),
        **metrics,
        "timings": timings,
        "seed": params.seed,
        "task_seed": study.task.seed,
        "data_sha256": ctx.data_sha256,
        "base_model": ctx.bundle_key,
        "versions": package_versions(),
        "device": str(next(iter(trained.sae.parameters())).device),
        "torch_threads": torch.get_num_threads(),
    }
    return result, trained
