"""Launching studies and running workers (the study in storage: hpo.service.studies).

`launch` creates or resumes a study, trains the base model once (recorded in the study by
content hash and uploaded to its artifact store), then runs N local `hpo worker`
processes and shows progress. `work` is one worker: on this machine or any other, it
needs only the storage URL and the study name. The budget is study-wide.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import optuna

from hpo.config import StorageSection, StudyFile
from hpo.cpus import threads_per_worker, torch_threads, usable_cpus
from hpo.device import launch_flags, visible_gpus, worker_device
from hpo.service.interrupt import GracefulStop, skip_final_collection
from hpo.service.local_workers import run_workers
from hpo.service.objective import Objective
from hpo.service.samplers import make_pruner, make_sampler, worker_seed
from hpo.service.studies import (
    best_value,
    create_or_load,
    load_study,
    prepare_base_model,
    trial_counts,
    worker_context,
)
from hpo.service.study_file import study_file_of
from hpo.service.trial_errors import recording_errors, stop_on_errors
from hpo.storage.artifacts import artifact_store
from hpo.storage.attrs import (
    BUDGET_ATTR,
    INTERRUPTED_ATTR,
)
from hpo.storage.engine import mask, open_storage
from hpo.storage.urls import resolve_url

# What a worker calls as each trial completes (the trial, the study's artifact store, its
# values), e.g. hpo.outputs.notes.publish_for_dashboard: charts and the best-trial note.
OnComplete = Callable[[optuna.Trial, Any, tuple[float, ...]], None]
# The lines `hpo launch` prints about a study when it ends (hpo.outputs.summary), given
# the study and the --storage hint its next commands need.
Summarize = Callable[[optuna.Study, str], list[str]]


def work(
    name: str,
    url: str,
    *,
    worker: str,
    threads: int | None,
    timeout: float | None = None,
    on_complete: OnComplete | None = None,
    device: str | None = None,
) -> int:
    """One worker: run trials until the study-wide budget is reached, or Ctrl-C (exit
    code 130, the trial in progress stored as FAIL with the "interrupted" user attr).
    `device` ("cuda:K" or "cpu", from `--gpu`) replaces the study's `params.device =
    "auto"`; it may not contradict an explicit one (hpo.device.worker_device)."""
    with GracefulStop() as stop, torch_threads(threads_per_worker(1, threads)):
        try:
            code = _work(
                stop,
                name,
                url,
                worker=worker,
                timeout=timeout,
                on_complete=on_complete,
                device=device,
            )
        except KeyboardInterrupt:
            code = 130
    if stop.requested:
        skip_final_collection()
    return code


def _work(
    stop: GracefulStop,
    name: str,
    url: str,
    *,
    worker: str,
    timeout: float | None,
    on_complete: OnComplete | None,
    device: str | None,
) -> int:
    study_file, where, study = _worker_study(name, url, worker, device)
    ctx = stop.call(worker_context, study, study_file, url, where)
    store = artifact_store(url, study_file.storage)

    def publish(trial: optuna.Trial, values: tuple[float, ...]) -> None:
        if on_complete is not None:
            on_complete(trial, store, values)

    deadline = None if timeout is None else time.monotonic() + timeout
    failed_in_a_row: list[str] = []  # "trial N: Type: message", since the last success
    while deadline is None or time.monotonic() < deadline:
        if stop.requested:
            return 130
        budget = int(study.user_attrs.get(BUDGET_ATTR, study_file.study.n_trials))
        optuna.storages.fail_stale_trials(study)
        counts = trial_counts(study)
        if counts["finished"] >= budget:
            break
        if counts["counted"] >= budget and counts["waiting"] == 0:
            # The rest are running elsewhere; wait in case a dead worker's trial is retried.
            stop.sleep(min(2.0, study_file.storage.heartbeat_interval))
            continue
        interrupted: list[int] = []
        errors: list[str] = []
        trial_run = Objective(study_file, ctx, budget, store, on_complete=publish)
        objective = recording_errors(_interruptible(trial_run, stop, interrupted), errors)
        try:
            # a trial that raised is FAIL, this worker goes on (hpo.service.trial_errors)
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except KeyboardInterrupt:
            # One write per line (workers share launch's stderr), after the ^C or the bar.
            for number in interrupted:
                sys.stderr.write(f"\ntrial {number} interrupted (worker {worker})\n")
            return 130
        failed_in_a_row = failed_in_a_row + errors if errors else []
        if len(failed_in_a_row) >= study_file.study.max_failed_in_a_row:
            return stop_on_errors(worker, failed_in_a_row)
    return 130 if stop.requested else 0


def _worker_study(
    name: str, url: str, worker: str, device: str | None
) -> tuple[StudyFile, str, optuna.Study]:
    """The study file, the device this worker trains on (made the current one where it
    is a GPU) and the study with this worker's own sampler: one seed per worker, so
    parallel workers do not propose the same configurations."""
    probe = load_study(name, url)
    study_file = study_file_of(probe)
    where = worker_device(study_file.params.device, device)
    if where.startswith("cuda:"):  # stray allocations on the current GPU land here too
        import torch

        torch.cuda.set_device(where)
    storage = open_storage(url, study_file.storage)
    sampler = make_sampler(
        study_file.sampler, seed=worker_seed(study_file.sampler.seed, worker), parallel=True
    )
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(study_file.pruner)
    )
    return study_file, where, study


def _interruptible(
    objective: Callable[[optuna.Trial], Any], stop: GracefulStop, interrupted: list[int]
) -> Callable[[optuna.Trial], Any]:
    """The objective, interrupted by Ctrl-C; an interrupted trial says so in a user attr
    before Optuna stores it as FAIL, and its number goes to `interrupted`."""

    def run(trial: optuna.Trial) -> Any:
        try:
            return stop.call(objective, trial)
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            interrupted.append(trial.number)
            raise

    return run


def launch(
    path: str,
    *,
    workers: int,
    n_trials: int | None,
    storage_url: str | None,
    data_dir: str | None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    threads: int | None = None,
    summarize: Summarize | None = None,
    gpus: tuple[int, ...] | None = None,
) -> int:
    """Create or resume the study, build its base model here (on the usable cores, or
    `threads`), then run `workers` local workers with `threads` torch threads each
    (default: the usable cores shared out; see hpo.cpus), worker i on GPU i mod G of
    `gpus` (default: every visible GPU when `params.device` is "auto"; () the CPU)."""
    with torch_threads(threads or usable_cpus()):
        return _launch(
            path,
            workers,
            n_trials,
            storage_url,
            data_dir,
            overrides,
            quiet,
            threads,
            summarize,
            gpus,
        )


def _launch(
    path: str,
    workers: int,
    n_trials: int | None,
    storage_url: str | None,
    data_dir: str | None,
    overrides: list[str] | None,
    quiet: bool,
    threads: int | None,
    summarize: Summarize | None,
    gpus: tuple[int, ...] | None,
) -> int:
    from hpo.service.preflight import check_launch
    from hpo.service.study_file import load_study_file

    per_worker = threads_per_worker(max(1, workers), threads)
    study_file = load_study_file(path, overrides)
    flags = launch_flags(study_file.params.device, workers, gpus, visible_gpus())
    url = resolve_url(study_file.storage, study_file.study.name, storage_url)
    # Everything that can be checked is (options, paths, data, base model, memory)
    # before the database or the study is created; on the first worker's device.
    device = worker_device(study_file.params.device, flags[0])
    bundle = check_launch(path, study_file, url, workers=workers, data_dir=data_dir, device=device)
    storage = open_storage(url, study_file.storage)
    study = create_or_load(study_file, storage, n_trials)
    budget = int(study.user_attrs[BUDGET_ATTR])
    _say(
        f"study {study.study_name} on {mask(url)}: budget {budget} trials, {workers} worker(s)"
        + _placement(flags, workers, study_file.params.device),
        quiet,
    )
    prepare_base_model(study, study_file, url, data_dir, bundle)
    if workers == 0:
        _say(
            f"study ready; add workers with: hpo worker --study {study.study_name} "
            f"--storage '{mask(url)}'",
            quiet,
        )
        return 0
    codes = run_workers(study, url, flags[:workers], per_worker, study_file.study.timeout, quiet)
    counts = trial_counts(study)
    if codes is None:
        _say(_interrupted(counts, budget), quiet=False)
        skip_final_collection()
        return 130
    _say(_summary(study, counts, budget), quiet)
    hint = _storage_hint(url, study.study_name)
    if summarize is not None:
        _say("\n".join(summarize(study, hint)), quiet)
    return 0 if all(c == 0 for c in codes) else 1


def _placement(flags: list[str | None], workers: int, configured: str) -> str:
    """Where the local workers run, for the launch line: " (2 on cuda:0, 1 on cpu)"."""
    placed = [f or configured for f in flags[:workers]]
    on = ", ".join(f"{placed.count(d)} on {d}" for d in dict.fromkeys(placed))
    return f" ({on})" if workers else ""


def _interrupted(counts: dict[str, int], budget: int) -> str:
    interrupted = f", {counts['interrupted']} interrupted" if counts["interrupted"] else ""
    return (
        f"\ninterrupted: {counts['finished']}/{budget} trials finished{interrupted} "
        "(interrupted trials are stored as FAIL and not counted in the budget); "
        "run the same command again to resume"
    )


def _storage_hint(url: str, name: str) -> str:
    """The --storage option the study's next commands need: none for its default storage."""
    return "" if url == resolve_url(StorageSection(), name) else f" --storage '{mask(url)}'"


def _summary(study: optuna.Study, counts: dict[str, int], budget: int) -> str:
    best = best_value(study)
    text = (
        f"study {study.study_name}: {counts['finished']}/{budget} trials "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
        + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "")
        + ")"
    )
    if best is not None:
        text += f"; best value {best:.4f} (trial {study.best_trial.number})"
    return text


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)
