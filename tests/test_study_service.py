"""The study service with real worker processes on SQLite, on the fast toy task.

Each test writes a tiny study file, runs `hpo` as a user would (separate OS processes),
and asserts on what `optuna` itself reads back from the storage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import helpers
import optuna
import pytest
from helpers import hpo

from hpo.cli import main
from hpo.service.runner import work
from hpo.storage.engine import open_storage

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState


def toy_study(tmp: Path, name: str = "svc", **over: Any) -> Path:
    return helpers.toy_study(tmp, name, storage={"url": url_of(tmp)}, **over)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return {**os.environ, "HPO_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def url_of(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'storage' / 'svc.db'}"


def load(path: Path, name: str = "svc") -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=open_storage(url_of(path.parent), heartbeat=False)
    )


def test_two_workers_finish_exactly_the_budget(tmp_path: Path, env: dict[str, str]) -> None:
    study_file = toy_study(tmp_path)
    out = hpo("launch", str(study_file), "--workers", "2", "--n-trials", "8", env=env)
    assert out.returncode == 0, out.stderr
    trials = load(study_file).get_trials()
    finished = [t for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    assert len(finished) == 8
    assert not [t for t in trials if t.state in (TS.RUNNING, TS.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    sampled = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(sampled)) == len(sampled), "two trials sampled the same parameters"
    assert "8/8 trials" in out.stderr


def test_resume_after_interrupt(tmp_path: Path, env: dict[str, str]) -> None:
    # A budget no machine finishes before the interrupt, and trials long enough that the
    # interrupt lands in training, as it does in real studies; the relaunch lowers it.
    study_file = toy_study(tmp_path, params__steps=4000, study__n_trials=500)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "launch", str(study_file), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not (tmp_path / "storage" / "svc.db").exists():
            continue
        try:
            states = [t.state for t in load(study_file).get_trials()]
        except KeyError:  # the study does not exist yet
            continue
        if states.count(TS.COMPLETE) >= 2 and states[-1] == TS.RUNNING:
            break
    assert proc.poll() is None, "the study ended before the interrupt"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    interrupted_at = time.monotonic()
    _, err = proc.communicate(timeout=120)
    # Prompt: well inside the 30 s launch gives a worker before killing it.
    assert time.monotonic() - interrupted_at < 20, err
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "run the same command again to resume" in err
    trials = load(study_file).get_trials()
    assert not [t for t in trials if t.state == TS.RUNNING]
    complete = len([t for t in trials if t.state == TS.COMPLETE])
    assert 1 <= complete < 500
    # Counted honestly: the trial stopped by Ctrl-C is a FAIL that says so, the summary
    # and `hpo status` count it as interrupted, and it is not a failure of the study.
    failed = [t for t in trials if t.state == TS.FAIL]
    assert failed and all(t.user_attrs.get("interrupted") is True for t in failed)
    assert f"trial {failed[-1].number} interrupted" in err
    assert f"{complete}/500 trials finished, {len(failed)} interrupted" in err
    status = hpo("status", "--storage", url_of(tmp_path), "--json", env=env)
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert (row["complete"], row["failed"], row["interrupted"]) == (complete, 0, len(failed))

    budget = complete + 1
    again = hpo("launch", str(study_file), "--workers", "1", "--n-trials", str(budget), env=env)
    assert again.returncode == 0, again.stderr
    trials = load(study_file).get_trials()
    assert len([t for t in trials if t.state == TS.COMPLETE]) == budget
    assert f"({budget} complete, 0 pruned, 0 failed, {len(failed)} interrupted)" in again.stderr


def test_killed_worker_trial_fails_by_heartbeat_and_is_retried(
    tmp_path: Path, env: dict[str, str]
) -> None:
    study_file = toy_study(tmp_path, params__steps=1500, study__n_trials=2)
    storage = f"sqlite:///{tmp_path / 'storage' / 'svc.db'}"
    assert hpo("launch", str(study_file), "--workers", "0", env=env).returncode == 0
    victim = subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", "--study", "svc", "--storage", storage],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(t.state == TS.RUNNING for t in load(study_file).get_trials()):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    running = [t.number for t in load(study_file).get_trials() if t.state == TS.RUNNING]
    assert running, "the killed worker's trial should still look RUNNING"

    rescuer = hpo("worker", "--study", "svc", "--storage", storage, env=env)
    assert rescuer.returncode == 0, rescuer.stderr
    trials = load(study_file).get_trials()
    failed = [t for t in trials if t.state == TS.FAIL]
    assert [t.number for t in failed] == running
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == running[0]]
    assert retries and retries[0].state == TS.COMPLETE
    assert retries[0].params == failed[0].params
    assert len([t for t in trials if t.state == TS.COMPLETE]) == 2
    assert not [t for t in trials if t.state in (TS.RUNNING, TS.WAITING)]


def test_pruner_stops_a_hopeless_trial(tmp_path: Path, env: dict[str, str]) -> None:
    # lr 1e-7 barely moves the SAE from its random init: hopeless next to lr 1e-2.
    study_file = toy_study(
        tmp_path,
        pruner__name="median",
        pruner__options={"n_startup_trials": 2, "n_warmup_steps": 0},
        search={"lr": {"choices": [1e-2, 1e-7]}},
        params__steps=400,
        study__n_trials=3,
    )
    assert main(["launch", str(study_file), "--workers", "0"]) == 0
    study = load(study_file)
    for lr in (1e-2, 1e-2, 1e-7):
        study.enqueue_trial({"lr": lr})
    assert work("svc", url_of(tmp_path), worker="w", threads=1) == 0  # in-process worker
    trials = load(study_file).get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE, TS.COMPLETE, TS.PRUNED]
    assert trials[2].user_attrs["pruned_at_step"] < 400


def test_trials_record_what_a_user_judges_them_by(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    study_file = toy_study(tmp_path, study__n_trials=2)
    assert main(["launch", str(study_file), "--workers", "0"]) == 0
    assert work("svc", url_of(tmp_path), worker="w", threads=1) == 0
    study = load(study_file)
    trial = study.best_trial
    for key in (
        "seed",
        "data_sha256",
        "base_model",
        "mmcs",
        "faithfulness_error",
        "reconstruction_error",
        "timings",
        "loss_history",
        "versions",
    ):
        assert key in trial.user_attrs, key
    assert study.user_attrs["study_file"]["study"]["name"] == "svc"
    assert "base_model_artifact" in study.user_attrs
    assert main(["status", "--storage", url_of(tmp_path), "--json"]) == 0
    assert '"complete": 2' in capsys.readouterr().out


def test_the_constraint_is_the_final_faithfulness_error_not_an_intermediate_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    limit = 0.5
    study_file = toy_study(tmp_path, study__n_trials=2, study__max_faithfulness_error=limit)
    assert main(["launch", str(study_file), "--workers", "0"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Optuna warns on a second constraint
        assert work("svc", url_of(tmp_path), worker="w", threads=1) == 0
    trials = load(study_file).get_trials(deepcopy=False)
    assert len(trials) == 2
    for trial in trials:  # evaluated at steps 50, 100 and 150; constrained once, at the end
        error = trial.user_attrs["faithfulness_error"]
        assert trial.constraints == {"faithfulness_error": pytest.approx(error - limit)}


BAD_FILES = [
    ({"study__colour": "x"}, "study.colour: unknown key; valid keys: name"),
    ({"search": {"lr": {"low": 0.1, "high": 0.01}}}, "search.lr: low (0.1) must be below high"),
    ({"search": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
    ({"sampler__name": "annealing"}, "sampler.name: unknown sampler 'annealing'; valid: tpe"),
    ({"pruner__name": "always"}, "pruner.name: unknown pruner 'always'; valid: median"),
    ({"study__directions": ["maximize", "minimize"]}, "study.directions has 2 entries"),
    ({"study__objectives": ["worst_group"]}, "unknown objective 'worst_group'"),
    (
        {"search": {"temperature": {"low": 0.1, "high": 1.0}}},
        "search.temperature: not a trial parameter",
    ),
    (
        {"search": {"n_components": {"low": 1.5, "high": 9.5}}},
        "search.n_components: value 1.5 is invalid",
    ),
    ({"params__top_k": 50}, "top_k (50) must not exceed n_components (5)"),
]


@pytest.mark.parametrize(("change", "message"), BAD_FILES)
def test_bad_study_file_gives_one_line_error(
    tmp_path: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    message: str,
) -> None:
    study_file = toy_study(tmp_path, **change)
    code = main(["launch", str(study_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {study_file}: ")
    assert message in err
    assert not (tmp_path / "storage" / "svc.db").exists(), "nothing half-written"


def test_unreachable_storage_is_one_line_without_the_password(
    tmp_path: Path, env: dict[str, str]
) -> None:
    study_file = toy_study(tmp_path)
    out = hpo(
        "launch",
        str(study_file),
        "--storage",
        "postgresql+psycopg://hpo:s3cret@127.0.0.1:1/hpo",
        env=env,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "s3cret" not in out.stderr
    assert out.stderr.startswith("error: storage postgresql+psycopg://hpo:***@127.0.0.1:1/hpo")


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    study_file = toy_study(tmp_path, study__n_trials=1)
    assert main(["launch", str(study_file), "--workers", "0"]) == 0
    proc = subprocess.Popen(  # as `hpo status | head -0`: the reader is gone before we write
        [sys.executable, "-m", "hpo", "status", "--storage", url_of(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err
