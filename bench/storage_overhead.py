"""Storage overhead per trial (SQLite vs PostgreSQL) and throughput with 1 vs 2 workers.

    python bench/storage_overhead.py [--postgres URL] [--trials 12] [--rounds 2]
                                     [--throughput-trials 8] [--pairs 2] [--steps 300]
                                     [--threads 1]

1. Overhead: one in-process worker (`hpo.service.runner.work`) runs N toy trials on each backend,
   rounds alternating SQLite and PostgreSQL so that load from other processes hits both
   alike (after one discarded warm-up run each: first-call imports). Every database call
   of the worker's storage objects is timed (outermost calls only: a nested call is not
   counted twice): calls from the trial thread are the overhead a trial waits for; the
   heartbeat thread's are reported beside them (they run in parallel with training).
   Artifact file copies are not database calls and count as trial time. Fraction =
   trial-thread storage time / the worker's wall time (worker start included). The
   worker uses --threads torch threads (1, as each of 2 launched workers on 2 cores).
2. Throughput: `hpo launch --workers 1` and `--workers 2` on a fixed budget, alternating
   in pairs per backend; trials per hour from the first trial's start to the last one's
   end (process start-up excluded); medians over pairs, and the median of the per-pair
   2-worker / 1-worker ratios. `hpo launch` gives each worker cpu_count / N torch
   threads, so this compares 1 process x 2 threads with 2 processes x 1 thread; the
   same pairs are also run as N `hpo worker --threads 1` processes (after `hpo launch
   --workers 0`), which isolates what a second worker on the same storage adds.

PostgreSQL comes from --postgres or $HPO_TEST_POSTGRES_URL (`.ci/postgres.sh` starts a
throw-away one); without either only SQLite is measured. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from optuna.storages import BaseStorage

from hpo.service.logs import configure_logging
from hpo.storage.compat import CACHED_STORAGE_CALLS

# Database calls: the public storage API, plus what Optuna's trial cache calls directly.
CALLS = (
    *(n for n, f in vars(BaseStorage).items() if callable(f) and not n.startswith("_")),
    *CACHED_STORAGE_CALLS,
    "record_heartbeat",
)


class StorageTimer:
    """Wraps a storage object's database calls with timers, per thread kind."""

    def __init__(self) -> None:
        self.trial_thread = 0.0
        self.heartbeat_thread = 0.0
        self.calls = 0
        self.by_call: dict[str, float] = {}
        self._depth = threading.local()

    def instrument(self, storage: Any) -> Any:
        for name in CALLS:
            if hasattr(storage, name):
                setattr(storage, name, self._timed(name, getattr(storage, name)))
        return storage

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._depth, "n", 0):
                return method(*args, **kwargs)
            self._depth.n = 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._depth.n = 0
                if threading.current_thread() is threading.main_thread():
                    self.trial_thread += elapsed
                    self.calls += 1
                    self.by_call[name] = self.by_call.get(name, 0.0) + elapsed
                else:
                    self.heartbeat_thread += elapsed

        return call


STUDIES = Path(__file__).resolve().parents[1] / "studies"


def study_file(folder: Path, name: str, steps: int, n_trials: int, task: str = "toy") -> Path:
    """A fresh study: the toy task's small trials, or `studies/colored_mnist.toml` as it is
    (base model from the cache, TPE over its search space) with `steps` SAE steps per
    trial and no pruning, so that every trial does the same work."""
    if task == "colored_mnist":
        doc = tomllib.loads((STUDIES / "colored_mnist.toml").read_text())
        doc["study"].update({"name": name, "n_trials": n_trials})
        doc["storage"] = {"artifacts": str(folder / "artifacts")}
        doc["pruner"] = {"name": "none"}
        doc["params"]["steps"] = steps
    else:
        doc = {
            "study": {"name": name, "objectives": ["mmcs"], "n_trials": n_trials},
            "storage": {"artifacts": str(folder / "artifacts")},
            "sampler": {"name": "tpe", "options": {"n_startup_trials": 4}},
            "pruner": {"name": "none"},
            "task": {"kind": "toy_superposition"},
            "params": {
                "n_components": 5,
                "top_k": 1,
                "steps": steps,
                "eval_every": 100,
                "batch_size": 1024,
                "cond_weight": 0.0,
                "sparsity_weight": 0.0,
                "decorr_weight": 0.0,
                "rank_weight": 0.0,
            },
            "search": {
                "lr": {"low": 3e-4, "high": 1e-2, "log": True},
                "faithful_weight": {"low": 0.1, "high": 10.0, "log": True},
                "recon_weight": {"low": 0.1, "high": 10.0, "log": True},
            },
        }
    path = folder / f"{name}.toml"
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def overhead(
    url: str, folder: Path, steps: int, n_trials: int, threads: int, task: str
) -> dict[str, Any]:
    """One in-process worker on a fresh study; its storage calls timed."""
    import hpo.service.runner as runner

    name = f"bench-{uuid.uuid4().hex[:8]}"
    runner.launch(
        str(study_file(folder, name, steps, n_trials, task)),
        workers=0,
        n_trials=None,
        storage_url=url,
        data_dir=None,
        quiet=True,
    )
    timer = StorageTimer()
    real_open = runner.open_storage
    runner.open_storage = lambda *a, **k: timer.instrument(real_open(*a, **k))
    try:
        start = time.perf_counter()
        runner.work(name, url, worker="bench", threads=threads)
        wall = time.perf_counter() - start
    finally:
        runner.open_storage = real_open
    return {
        "wall": wall,
        "storage": timer.trial_thread,
        "heartbeat": timer.heartbeat_thread,
        "calls": timer.calls,
        "trials": n_trials,
        "by_call": timer.by_call,
    }


def throughput(
    url: str, folder: Path, steps: int, n_trials: int, workers: int, one_thread: bool, task: str
) -> float:
    """Trials per hour of `hpo launch --workers N` (or of N `hpo worker --threads 1`),
    first trial start to last trial end."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    path = study_file(folder, name, steps, n_trials, task)
    hpo = [sys.executable, "-m", "hpo"]
    launch = [*hpo, "launch", str(path), "--storage", url]
    if not one_thread:
        subprocess.run([*launch, "--workers", str(workers)], check=True, capture_output=True)
    else:
        subprocess.run([*launch, "--workers", "0"], check=True, capture_output=True)
        procs = [
            subprocess.Popen(
                [
                    *hpo,
                    "worker",
                    "--study",
                    name,
                    "--storage",
                    url,
                    "--threads",
                    "1",
                    "--worker-id",
                    f"bench-{i}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        if any(p.wait() for p in procs):
            raise SystemExit(f"a worker failed on {name}")
    from hpo.storage.engine import open_storage

    trials = optuna.load_study(
        study_name=name, storage=open_storage(url, heartbeat=False)
    ).get_trials()
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return n_trials / (end - start).total_seconds() * 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--postgres",
        default=os.environ.get("HPO_TEST_POSTGRES_URL"),
        help="PostgreSQL URL (default: $HPO_TEST_POSTGRES_URL)",
    )
    ap.add_argument("--trials", type=int, default=12, help="trials per overhead round")
    ap.add_argument("--rounds", type=int, default=2, help="overhead rounds per backend")
    ap.add_argument("--throughput-trials", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=2, help="1-vs-2-worker pairs per backend")
    ap.add_argument("--steps", type=int, default=300, help="SAE steps per toy trial")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, overhead part")
    ap.add_argument("--task", choices=("toy", "colored_mnist"), default="toy")
    ap.add_argument(
        "--modes",
        default="launch,worker",
        help="throughput modes: launch (hpo launch --workers N), worker (N x hpo "
        "worker --threads 1)",
    )
    args = ap.parse_args()

    configure_logging()  # as the CLI does: the in-process worker logs like `hpo worker`
    folder = Path(tempfile.mkdtemp(prefix="hpo-bench-storage-"))
    os.environ.setdefault("HPO_CACHE_DIR", str(folder / "cache"))
    backends = {"SQLite": f"sqlite:///{folder / 'bench.db'}"}
    if args.postgres:
        backends["PostgreSQL"] = args.postgres

    for url in backends.values() if args.rounds else ():
        overhead(url, folder, args.steps, 1, args.threads, args.task)  # warm-up: first-call costs
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    for _ in range(args.rounds):
        for backend, url in backends.items():
            runs[backend].append(
                overhead(url, folder, args.steps, args.trials, args.threads, args.task)
            )
    modes = {
        label: one_thread
        for key, label, one_thread in (
            ("launch", "hpo launch --workers N", False),
            ("worker", "N x hpo worker --threads 1", True),
        )
        if key in args.modes.split(",")
    }
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {
        (b, m): [] for m in modes for b in backends
    }
    for _ in range(args.pairs):
        for mode, one_thread in modes.items():
            for backend, url in backends.items():
                one, two = (
                    throughput(
                        url, folder, args.steps, args.throughput_trials, w, one_thread, args.task
                    )
                    for w in (1, 2)
                )
                rates[backend, mode].append((one, two))

    if args.rounds:
        print_overhead(args, runs)
    if args.pairs:
        print_throughput(args, rates)


def print_overhead(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    print(
        f"{args.task} trials of {args.steps} SAE steps, {args.threads} torch thread(s); "
        f"{args.rounds} rounds x {args.trials} trials per backend, medians over rounds.\n"
    )
    print(
        "| backend | trial wall (s) | storage / trial (ms) | calls / trial | "
        "storage fraction | heartbeat thread / trial (ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for backend, rs in runs.items():
        med = {
            k: statistics.median(r[k] / r["trials"] for r in rs)
            for k in ("wall", "storage", "heartbeat", "calls")
        }
        frac = statistics.median(r["storage"] / r["wall"] for r in rs)
        print(
            f"| {backend} | {med['wall']:.2f} | {1000 * med['storage']:.1f} | "
            f"{med['calls']:.0f} | {100 * frac:.1f} % | {1000 * med['heartbeat']:.1f} |"
        )
    print("\nWhere the trial thread's storage time goes (ms per trial, all rounds):\n")
    for backend, rs in runs.items():
        total: dict[str, float] = {}
        for r in rs:
            for name, t in r["by_call"].items():
                total[name] = total.get(name, 0.0) + t
        n = sum(r["trials"] for r in rs)
        top = sorted(total.items(), key=lambda kv: -kv[1])[:5]
        print(f"- {backend}: " + ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in top))


def print_throughput(
    args: argparse.Namespace, rates: dict[tuple[str, str], list[tuple[float, float]]]
) -> None:
    print(
        f"\nThroughput on a budget of {args.throughput_trials} trials, {args.pairs} pair(s) each:\n"
    )
    print("| backend | workers | N = 1 (trials/h) | N = 2 (trials/h) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for (backend, mode), pairs in rates.items():
        one = statistics.median(p[0] for p in pairs)
        two = statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[1] / p[0] for p in pairs)
        print(f"| {backend} | {mode} | {one:.0f} | {two:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
