"""One worker per GPU: which GPU each local worker gets, what its command line says, and
what a trial records; with the device count faked where a GPU would be needed, so that
every test here runs on a CPU-only machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import torch
from helpers import hpo, toy_study

from hpo.cli import main
from hpo.device import assign_gpus, launch_flags, worker_device
from hpo.errors import UserError
from hpo.service.local_workers import worker_command
from hpo.service.runner import launch, work


def test_workers_go_round_robin_over_the_gpus() -> None:
    assert assign_gpus(3, (0, 1)) == [0, 1, 0]
    assert assign_gpus(4, (2, 0)) == [2, 0, 2, 0]
    assert assign_gpus(2, ()) == [None, None]


def test_launch_places_workers_by_gpus_flag_and_visible_count() -> None:
    # 3 workers, 2 GPUs visible, no --gpus: worker i on GPU i mod 2.
    assert launch_flags("auto", 3, None, 2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert launch_flags("auto", 3, (1,), 2) == ["cuda:1"] * 3  # --gpus 1
    assert launch_flags("auto", 2, (), 2) == ["cpu", "cpu"]  # --gpus none
    assert launch_flags("auto", 2, None, 0) == [None, None]  # no CUDA: no flag, CPU
    assert launch_flags("auto", 0, (1,), 2) == ["cuda:1"]  # the launcher's own device
    # An explicit study device: no flags, every worker uses it; a flag must agree.
    assert launch_flags("cuda:1", 2, None, 2) == [None, None]
    assert launch_flags("cpu", 2, (), 2) == ["cpu", "cpu"]
    with pytest.raises(UserError, match=r"--gpus: the study sets params.device = 'cpu'"):
        launch_flags("cpu", 2, (0, 1), 2)


def test_a_worker_flag_replaces_auto_and_never_overrules_the_study() -> None:
    assert worker_device("auto", "cuda:1") == "cuda:1"
    assert worker_device("auto", None) == "auto"
    assert worker_device("cuda:1", "cuda:1") == "cuda:1"
    assert worker_device("cpu", None) == "cpu"
    with pytest.raises(UserError, match=r"--gpu: the study sets params.device = 'cuda:1'"):
        worker_device("cuda:1", "cpu")


def test_worker_command_lines_name_their_gpu() -> None:
    lines = [
        worker_command("s", i, 1, None, d) for i, d in enumerate(launch_flags("auto", 3, None, 2))
    ]
    assert [line[line.index("--gpu") + 1] for line in lines] == ["0", "1", "0"]
    assert worker_command("s", 0, 1, None, "cpu")[-2:] == ["--gpu", "none"]
    assert "--gpu" not in worker_command("s", 0, 1, None, None)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_gpus_none_runs_on_the_cpu_and_status_counts_trials_per_device(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    path = toy_study(tmp_path, "gpu", storage={"url": url}, study__n_trials=2)
    out = hpo("launch", str(path), "--workers", "1", "--gpus", "none", env=env)
    assert out.returncode == 0, out.stderr
    assert "1 worker(s) (1 on cpu)" in out.stderr
    study = optuna.load_study(study_name="gpu", storage=url)
    assert [t.user_attrs["device"] for t in study.trials] == ["cpu", "cpu"]
    assert main(["status", "gpu", "--storage", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["devices"] == {"cpu": 2}
    assert main(["status", "gpu", "--storage", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].endswith("trials per device") and table[1].endswith(" cpu 2")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="fakes a GPU count on a CPU machine")
def test_three_workers_on_two_faked_gpus_get_gpu_0_1_0(
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The launcher believes it sees 2 GPUs; the workers it spawns (real processes) do
    not, so each stops at once with the error naming the --gpu it was given."""
    url = f"sqlite:///{tmp_path / 'gpu.db'}"
    path = toy_study(tmp_path, "gpu", storage={"url": url})
    run = {"workers": 0, "n_trials": None, "storage_url": url, "data_dir": None, "quiet": True}
    assert launch(str(path), **run) == 0  # the study and its base model, on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    capfd.readouterr()
    assert launch(str(path), **{**run, "workers": 3, "quiet": False}) == 1
    err = capfd.readouterr().err
    assert "3 worker(s) (2 on cuda:0, 1 on cuda:1)" in err
    assert err.count("error: --gpu 0: no CUDA device is visible here") == 2
    assert err.count("error: --gpu 1: no CUDA device is visible here") == 1
    assert optuna.load_study(study_name="gpu", storage=url).trials == []


@pytest.mark.slow
def test_a_worker_flag_against_an_explicit_study_device_is_an_error(
    tmp_path: Path, env: dict[str, str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cpu.db'}"
    path = toy_study(tmp_path, "cpu", storage={"url": url}, params__device="cpu")
    run = {"workers": 0, "n_trials": None, "storage_url": url, "data_dir": None, "quiet": True}
    assert launch(str(path), **run) == 0
    with pytest.raises(UserError, match=r"--gpu: the study sets params.device = 'cpu'"):
        work("cpu", url, worker="w", threads=1, device="cuda:0")
    assert optuna.load_study(study_name="cpu", storage=url).trials == []
