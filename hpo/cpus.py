"""How many CPU cores this process may really use, and torch's thread count to match.

`os.cpu_count()` and torch's default count the machine's cores, not the ones a process
may use: under `taskset`, in a container with a CPU quota or in a Slurm job, torch would
start more threads than it has cores, and its OpenMP threads, waiting for each other at
every parallel region, then make a run several times slower instead of a bit slower.
So the thread count is the least of the CPU affinity, the cgroup CPU quota (v2
`cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, on the process's cgroup and its
ancestors, rounded down: a thread over the quota is throttled for the rest of each
period) and `SLURM_CPUS_PER_TASK`, divided among the local workers; `--threads` overrides.

The parsing functions are pure (fed file contents and the environment), so they are
tested without a cgroup; `usable_cpus` reads the real ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from hpo.errors import UserError

CGROUP_ROOT = Path("/sys/fs/cgroup")
# OpenMP threads that wait for work sleep instead of spinning: a spinning thread holds a
# core that another process (or this one's other thread) needs. Read by the OpenMP
# runtime once, when torch loads it; `hpo launch` sets it for its workers.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def quota_v2(cpu_max: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("max 100000" or "150000 100000")."""
    parts = cpu_max.split()
    if not parts or parts[0] == "max":
        return None
    period = float(parts[1]) if len(parts) > 1 else 100000.0
    quota = float(parts[0])
    return quota / period if quota > 0 and period > 0 else None


def quota_v1(quota_us: str, period_us: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`."""
    quota, period = int(quota_us.strip()), int(period_us.strip())
    return quota / period if quota > 0 and period > 0 else None


def slurm_cpus(env: Mapping[str, str]) -> int | None:
    value = env.get("SLURM_CPUS_PER_TASK", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cgroup_dirs(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> list[tuple[int, Path]]:
    """The cgroup folders that can hold this process's CPU quota, with their cgroup
    version: its own cgroup and every ancestor, for v2 ("0::/path") and for a v1 cpu
    controller ("N:cpu,cpuacct:/path", mounted at root/cpu,cpuacct or root/cpu)."""
    found: list[tuple[int, Path]] = []
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            version, bases = 2, [root, root / "unified"]
        elif "cpu" in controllers.split(","):
            version, bases = 1, [root / controllers, root / "cpu"]
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for base in bases:
            for depth in range(len(parts), -1, -1):
                found.append((version, base.joinpath(*parts[:depth])))
    return found


def cgroup_quota(proc_self_cgroup: str, read: Callable[[Path], str | None]) -> float | None:
    """The tightest CPU quota over this process's cgroups (`read` returns a file's text,
    or None when it is missing)."""
    quotas: list[float] = []
    for version, folder in cgroup_dirs(proc_self_cgroup):
        try:
            if version == 2:
                text = read(folder / "cpu.max")
                quota = quota_v2(text) if text is not None else None
            else:
                q, p = read(folder / "cpu.cfs_quota_us"), read(folder / "cpu.cfs_period_us")
                quota = quota_v1(q, p) if q is not None and p is not None else None
        except ValueError:
            quota = None
        if quota is not None:
            quotas.append(quota)
    return min(quotas) if quotas else None


def combine(affinity: int, quota: float | None, slurm: int | None) -> int:
    """The cores a process may use: the least of what each limit allows, at least 1."""
    limits = [affinity]
    if quota is not None:
        limits.append(math.floor(quota))
    if slurm is not None:
        limits.append(slurm)
    return max(1, min(limits))


def usable_cpus() -> int:
    """The CPU cores this process may really use (see the module docstring)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = os.cpu_count() or 1
    return combine(
        affinity,
        cgroup_quota(_read(Path("/proc/self/cgroup")) or "", _read),
        slurm_cpus(os.environ),
    )


def threads_per_worker(workers: int = 1, override: int | None = None) -> int:
    """torch threads for each of `workers` local processes: `override` (--threads), else
    the usable cores shared out, at least one each."""
    if override is not None:
        check_threads(override)
        return override
    return max(1, usable_cpus() // max(1, workers))


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UserError(f"--threads: must be 1 or more, got {threads}")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside the block, as before after it (a
    command run in-process, as the tests do, leaves its caller's setting alone)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# torch threads inside `reproducible_threads`: one, the only count that every `--threads`
# (and every machine) can give.
REPRODUCIBLE_THREADS = 1


@contextmanager
def reproducible_threads() -> Iterator[None]:
    """One torch thread inside the block, whatever `--threads` is, as before after it.

    torch adds a sum split over threads in an order that follows the thread count:
    oneDNN's convolution weight gradients (the batch in one part per thread), MKL's
    products over a long inner dimension (a small layer's weight gradient), any sum over
    more than 32768 numbers. The last bits differ, training amplifies them, and a seed
    gives other figures on two threads than on one (README: "Same seed, same numbers").
    So what trains on such sums or reports one runs here: the base model
    and the oracle, the references, the fitted removal, the decomposition errors. The
    SAE's training and the scoring keep `--threads` (their products split over rows);
    tests/test_reproducible.py checks both.
    """
    with torch_threads(REPRODUCIBLE_THREADS):
        yield


def set_openmp_env() -> None:
    """OPENMP_ENV as defaults of this process's environment (a value the user set wins),
    before torch is imported; afterwards it changes only the processes started later."""
    for key, value in OPENMP_ENV.items():
        os.environ.setdefault(key, value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
