"""The local worker processes `hpo launch` runs: their command lines, progress while
they work, and a clean stop on Ctrl-C (forwarded to each; one that does not stop within
the grace period is killed, and its trial failed by heartbeat and retried)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna

from hpo.cpus import OPENMP_ENV
from hpo.device import gpu_arg
from hpo.service.interrupt import GracefulStop
from hpo.service.objective import is_result
from hpo.service.studies import best_value, trial_counts
from hpo.storage.attrs import BUDGET_ATTR
from hpo.storage.urls import STORAGE_ENV

WORKER_STOP_GRACE = 30.0  # seconds launch waits for its workers after Ctrl-C, then kills


def run_workers(
    study: optuna.Study,
    url: str,
    devices: list[str | None],
    threads: int,
    timeout: float | None,
    quiet: bool,
) -> list[int | None] | None:
    """Run one local worker process per entry of `devices` (its `--gpu`, as a device;
    None: none) until the budget is reached: their exit codes, or None when Ctrl-C
    stopped them."""
    # The URL travels by env, not argv (ps shows argv); OpenMP's settings must be in the
    # environment before a worker loads torch.
    env = {**OPENMP_ENV, **os.environ, STORAGE_ENV: url}
    budget = int(study.user_attrs[BUDGET_ATTR])
    procs: list[subprocess.Popen[bytes]] = []

    def forward() -> None:  # in the signal handler: each worker stops its own trial
        for p in procs:
            if p.returncode is None:
                try:  # SIGTERM: one still starting up ends at once (hpo.service.interrupt)
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    with GracefulStop(on_request=forward) as stop:
        for i, device in enumerate(devices):
            if stop.requested:
                break
            procs.append(_spawn(worker_command(study.study_name, i, threads, timeout, device), env))
        _monitor(study, procs, budget, quiet, stop)
        if stop.requested:
            _wait_or_kill(procs, WORKER_STOP_GRACE)
            return None
    return [p.returncode for p in procs]


def worker_command(
    name: str, i: int, threads: int, timeout: float | None, device: str | None
) -> list[str]:
    """The command line of local worker `i` (`device`: what its --gpu names, if any)."""
    return (
        [sys.executable, "-m", "hpo", "worker", "--study", name]
        + ["--worker-id", f"{os.uname().nodename}-{os.getpid()}-{i}", "--threads", str(threads)]
        + (["--timeout", str(timeout)] if timeout else [])
        + ([] if device is None else ["--gpu", gpu_arg(device)])
    )


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: a terminal Ctrl-C reaches only this process, which forwards it.
    return subprocess.Popen(argv, env=env, start_new_session=True)


def _wait_or_kill(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """Workers stop within a second or two of Ctrl-C (see hpo.service.interrupt); one
    that does not (a storage call retrying while the database is away) is killed, and
    its trial is failed by heartbeat and retried when the study resumes."""
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _monitor(
    study: optuna.Study,
    procs: list[subprocess.Popen[bytes]],
    budget: int,
    quiet: bool,
    stop: GracefulStop,
) -> None:
    """A progress bar on a terminal; elsewhere (a log, a pipe) one line per trial that
    ends, instead of a bar redrawn every second."""
    if not quiet and not sys.stderr.isatty():
        _log_trials(study, procs, budget, stop)
        return
    from tqdm import tqdm

    with tqdm(total=budget, desc="trials", disable=quiet, unit="trial", dynamic_ncols=True) as bar:
        while not stop.requested:
            alive = any(p.poll() is None for p in procs)
            counts = trial_counts(study)
            bar.n = min(counts["finished"], budget)
            best = best_value(study)
            bar.set_postfix(
                complete=counts["complete"],
                pruned=counts["pruned"],
                failed=counts["failed"],
                running=counts["running"],
                best="-" if best is None else f"{best:.4f}",
                refresh=False,
            )
            bar.refresh()
            if not alive:
                return
            stop.sleep(1.0)


def _log_trials(
    study: optuna.Study, procs: list[subprocess.Popen[bytes]], budget: int, stop: GracefulStop
) -> None:
    reported: set[int] = set()
    while not stop.requested:
        alive = any(p.poll() is None for p in procs)
        for line in finished_trial_lines(study, reported, budget):
            print(line, file=sys.stderr, flush=True)
        if not alive:
            return
        stop.sleep(1.0)


def finished_trial_lines(study: optuna.Study, reported: set[int], budget: int) -> list[str]:
    """One line per trial that has ended since the last call (its number added to
    `reported`): its state and value, the study's count and best so far."""
    ended = [t for t in study.get_trials(deepcopy=False) if is_result(t)]
    new = [t for t in ended if t.number not in reported]
    if not new:
        return []
    counts, best = trial_counts(study), best_value(study)
    lines = []
    for t in sorted(new, key=lambda t: t.number):
        reported.add(t.number)
        value = "" if t.values is None else " " + ", ".join(f"{v:.4f}" for v in t.values)
        lines.append(
            f"trial {t.number} {t.state.name.lower()}{value}; "
            f"{min(counts['finished'], budget)}/{budget} finished"
            + ("" if best is None else f", best {best:.4f}")
        )
    return lines
