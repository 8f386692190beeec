"""The cores a process may use, from fake cgroup files and environments (hpo.cpus)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hpo import cpus
from hpo.cli import main


def reader(files: dict[str, str]) -> Callable[[Path], str | None]:
    """Fake cgroup files: their text by path, None for a missing one."""
    return lambda path: files.get(str(path))


@pytest.mark.parametrize(
    ("cpu_max", "cpus_allowed"),
    [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("50000", 0.5)],
)
def test_cgroup_v2_cpu_max(cpu_max: str, cpus_allowed: float | None) -> None:
    assert cpus.quota_v2(cpu_max + "\n") == cpus_allowed


@pytest.mark.parametrize(
    ("quota", "period", "cpus_allowed"),
    [("-1", "100000", None), ("400000", "100000", 4.0), ("25000\n", "100000\n", 0.25)],
)
def test_cgroup_v1_cfs_quota(quota: str, period: str, cpus_allowed: float | None) -> None:
    assert cpus.quota_v1(quota, period) == cpus_allowed


@pytest.mark.parametrize(
    ("value", "n"), [(None, None), ("4", 4), ("0", None), ("", None), ("two", None)]
)
def test_slurm_cpus_per_task(value: str | None, n: int | None) -> None:
    env = {} if value is None else {"SLURM_CPUS_PER_TASK": value}
    assert cpus.slurm_cpus(env) == n


def test_a_container_with_cgroup_v2_and_a_quota_of_one_and_a_half() -> None:
    files = {"/sys/fs/cgroup/cpu.max": "150000 100000\n"}
    assert cpus.cgroup_quota("0::/\n", reader(files)) == 1.5


def test_cgroup_v2_takes_the_tightest_of_the_process_cgroup_and_its_ancestors() -> None:
    files = {
        "/sys/fs/cgroup/user.slice/cpu.max": "200000 100000",
        "/sys/fs/cgroup/user.slice/job-7/cpu.max": "max 100000",
        "/sys/fs/cgroup/user.slice/job-7/step/cpu.max": "300000 100000",
    }
    assert cpus.cgroup_quota("0::/user.slice/job-7/step\n", reader(files)) == 2.0


def test_cgroup_v1_cpu_controller() -> None:
    proc = "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    files = {
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    assert cpus.cgroup_quota(proc, reader(files)) == 3.0


def test_no_quota_anywhere() -> None:
    files = {
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
        "/sys/fs/cgroup/cpu.max": "max 100000",
    }
    assert cpus.cgroup_quota("1:cpu:/\n0::/\n", reader(files)) is None


def test_unreadable_or_garbled_files_are_no_limit() -> None:
    files = {"/sys/fs/cgroup/cpu.max": "garbage here"}
    assert cpus.cgroup_quota("0::/\n", reader(files)) is None
    assert cpus.cgroup_quota("", reader({})) is None


@pytest.mark.parametrize(
    ("affinity", "quota", "slurm", "usable"),
    [
        (16, None, None, 16),  # nothing but the machine
        (2, None, None, 2),  # taskset -c 0,1
        (16, 1.5, None, 1),  # a quota of 1.5 CPUs: a second thread would be throttled
        (16, 0.5, None, 1),  # at least one
        (16, 4.0, 8, 4),
        (16, None, 3, 3),  # srun --cpus-per-task 3
        (2, 8.0, 4, 2),
    ],
)
def test_the_least_limit_wins(
    affinity: int, quota: float | None, slurm: int | None, usable: int
) -> None:
    assert cpus.combine(affinity, quota, slurm) == usable


def test_threads_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 5)
    assert cpus.threads_per_worker() == 5
    assert cpus.threads_per_worker(2) == 2
    assert cpus.threads_per_worker(8) == 1
    assert cpus.threads_per_worker(2, override=3) == 3  # --threads wins


def test_usable_cpus_on_this_machine_respects_affinity() -> None:
    assert 1 <= cpus.usable_cpus() <= len(os.sched_getaffinity(0))


def test_openmp_env_is_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cpus.set_openmp_env()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cpus.set_openmp_env()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stays


@pytest.mark.parametrize("command", ["trial", "launch", "worker"])
@pytest.mark.parametrize("threads", ["0", "-2"])
def test_threads_below_one_is_a_one_line_error(
    command: str, threads: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "trial": ["trial", "studies/toy_superposition.toml"],
        "launch": ["launch", "studies/toy_superposition.toml"],
        "worker": ["worker", "--study", "toy", "--storage", f"sqlite:///{tmp_path}/none.db"],
    }[command]
    assert main([*argv, "--threads", threads]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --threads: must be 1 or more, got {threads}\n"
    assert list(tmp_path.iterdir()) == []
