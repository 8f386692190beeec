"""The study service under load: PostgreSQL, many workers, restarts, and the gRPC proxy.

Like test_study_service.py, each test writes a tiny toy-task study, runs `hpo` as separate
OS processes, and asserts on what Optuna reads back. The PostgreSQL tests need a server:
`bash .ci/run` starts a throw-away one (.ci/postgres.sh) and sets HPO_TEST_POSTGRES_URL,
HPO_TEST_POSTGRES_WORKER_URL (the README's least-privileged worker role) and
HPO_TEST_PG_CTL (which the restart test uses); each test uses its own study name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import optuna
import pytest

from hpo.config import StorageSection
from hpo.storage import compat
from hpo.storage.attrs import HEARTBEAT_ATTR
from hpo.storage.engine import CONNECTIONS_PER_WORKER, open_storage

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState
NEEDS_PG = "needs PostgreSQL: run `bash .ci/run`, or start a server and set HPO_TEST_POSTGRES_URL"


def toy_study(tmp: Path, name: str, **over: Any) -> Path:
    return helpers.toy_study(tmp, name, storage={"artifacts": str(tmp / "artifacts")}, **over)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the toy base model is trained once, by the first launch."""
    return tmp_path_factory.mktemp("hpo-cache")


@pytest.fixture
def env(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("HPO_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    return {**os.environ, "HPO_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(NEEDS_PG)
    return url


@pytest.fixture
def name() -> str:
    """A study name of its own: tests share one database."""
    return f"t-{uuid.uuid4().hex[:10]}"


def hpo(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return helpers.hpo(*args, env=env, timeout=timeout)


_SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """A failed test leaves no worker behind to disturb the next one."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def worker(name: str, url: str, env: dict[str, str]) -> subprocess.Popen:
    """`hpo worker` on one torch thread: several on two cores must not oversubscribe them."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "worker",
            "--study",
            name,
            "--storage",
            url,
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _SPAWNED.append(proc)
    return proc


def trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    return study.get_trials()


def wait_for(condition: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# What a storage failure prints. (Not "Traceback": Optuna logs one for a SurplusTrial, the
# normal end of two workers starting the budget's last trial at once.)
STORAGE_ERRORS = (
    "database is locked",
    "too many clients",
    "StorageInternalError",
    "UnboundLocalError",
    "error: storage",
)


def no_storage_errors(stderr: str) -> bool:
    return not any(e in stderr for e in STORAGE_ERRORS)


def check_budget(ts: list[optuna.trial.FrozenTrial], budget: int) -> list[int]:
    """What a user checks after a parallel run: every trial of the budget finished once.
    Returns the numbers of failed trials other than surplus ones."""
    assert [t.state for t in ts].count(TS.COMPLETE) == budget, [t.state for t in ts]
    assert not [t for t in ts if t.state in (TS.RUNNING, TS.WAITING)]
    assert sorted(t.number for t in ts) == list(range(len(ts))), "duplicate trial numbers"
    fresh = [t for t in ts if t.state == TS.COMPLETE and "failed_trial" not in t.system_attrs]
    sampled = [tuple(sorted(t.params.items())) for t in fresh]
    assert len(set(sampled)) == len(sampled), "two workers sampled the same parameters"
    return [t.number for t in ts if t.state == TS.FAIL and "surplus" not in t.user_attrs]


# ---- PostgreSQL ------------------------------------------------------------------------


@pytest.mark.postgres
def test_three_workers_share_one_study(
    tmp_path: Path, env: dict[str, str], pg_url: str, name: str
) -> None:
    """As on many machines: the study's owner launches it, then three `hpo worker`s join,
    as the least-privileged role of the README where CI provides one."""
    workers_url = os.environ.get("HPO_TEST_POSTGRES_WORKER_URL", pg_url)
    study_file = toy_study(tmp_path, name)
    out = hpo(
        "launch", str(study_file), "--storage", pg_url, "--workers", "0", "--n-trials", "6", env=env
    )
    assert out.returncode == 0, out.stderr
    workers = [worker(name, workers_url, env) for _ in range(3)]
    for w in workers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0, err
        assert no_storage_errors(err), err
    assert check_budget(trials(name, pg_url), 6) == []
    status = hpo("status", "--storage", workers_url, "--json", env=env)
    row = next(r for r in json.loads(status.stdout) if r["study"] == name)
    assert (row["complete"], row["running"]) == (6, 0)


@pytest.mark.postgres
def test_killed_worker_trial_fails_by_heartbeat_and_is_retried(
    tmp_path: Path, env: dict[str, str], pg_url: str, name: str
) -> None:
    study_file = toy_study(tmp_path, name, params__steps=800, study__n_trials=2)
    assert (
        hpo("launch", str(study_file), "--storage", pg_url, "--workers", "0", env=env).returncode
        == 0
    )
    victim = worker(name, pg_url, env)
    wait_for(lambda: any(t.state == TS.RUNNING for t in trials(name, pg_url)), "a trial")
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    running = [t.number for t in trials(name, pg_url) if t.state == TS.RUNNING]
    assert running, "the killed worker's trial should still look RUNNING"

    rescuer = hpo("worker", "--study", name, "--storage", pg_url, "--threads", "1", env=env)
    assert rescuer.returncode == 0, rescuer.stderr
    ts = trials(name, pg_url)
    assert check_budget(ts, 2) == running
    failed = [t for t in ts if t.number in running]
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == running[0]]
    assert retry and retry[0].state == TS.COMPLETE and retry[0].params == failed[0].params


@pytest.mark.postgres
def test_workers_ride_out_a_postgres_restart(
    tmp_path: Path, env: dict[str, str], pg_url: str, name: str
) -> None:
    pg_ctl = os.environ.get("HPO_TEST_PG_CTL")
    if not pg_ctl:
        pytest.skip("needs HPO_TEST_PG_CTL (a command prefix for pg_ctl): run `bash .ci/run`")
    # Trials of a few seconds that report every fraction of one, and a grace period longer
    # than a restart but shorter than the second outage: no worker can beat while the
    # database is away, and no live trial may be taken for a dead worker's because of it.
    study_file = toy_study(
        tmp_path, name, params__steps=400, study__n_trials=6, storage__grace_period=5
    )
    assert (
        hpo("launch", str(study_file), "--storage", pg_url, "--workers", "0", env=env).returncode
        == 0
    )
    workers = [worker(name, pg_url, env) for _ in range(2)]

    def progress() -> tuple[list[optuna.trial.FrozenTrial], int]:
        ts = trials(name, pg_url)
        return [t for t in ts if t.state == TS.COMPLETE], sum(t.state == TS.RUNNING for t in ts)

    wait_for(lambda: len(progress()[0]) >= 1 and progress()[1] >= 1, "a trial to complete")
    done_before = {t.number: t.value for t in progress()[0]}

    def pg(action: str) -> None:
        subprocess.run(
            ["bash", "-c", f"{pg_ctl} {action}"], check=True, capture_output=True, timeout=120
        )

    pg("restart")
    # And a longer outage at once, while trials certainly still run: down for 8 s, so
    # that storage calls and heartbeats certainly hit it, and longer than grace_period.
    pg("stop")
    time.sleep(8.0)
    pg("start")

    errs = []
    for w in workers:
        _, err = w.communicate(timeout=240)
        errs.append(err)
        assert w.returncode == 0, err
    assert all(no_storage_errors(e) for e in errs), errs
    assert any("heartbeat missed" in e or "reconnected" in e for e in errs), (
        "the workers never noticed the outage: the test did not test anything"
    )
    ts = trials(name, pg_url)
    assert check_budget(ts, 6) == [], "a trial was lost to the restart"
    assert done_before == {
        t.number: t.value for t in ts if t.number in done_before and t.state == TS.COMPLETE
    }


@pytest.mark.postgres
def test_eight_workers_stay_within_their_connections(
    tmp_path: Path, env: dict[str, str], pg_url: str, name: str
) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        limit = int(conn.exec_driver_sql("SHOW max_connections").scalar()) - int(
            conn.exec_driver_sql("SHOW superuser_reserved_connections").scalar()
        )
    peak: dict[str, int] = {}
    peak_total = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak_total
        with engine.connect() as conn:
            while not stop.is_set():
                rows = conn.execute(
                    sqlalchemy.text(
                        "SELECT application_name, count(*) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'hpo-%' GROUP BY application_name"
                    )
                ).all()
                conn.rollback()  # a fresh snapshot of pg_stat_activity each time
                for app, n in rows:
                    peak[app] = max(peak.get(app, 0), n)
                peak_total = max(peak_total, sum(n for _, n in rows))
                time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    study_file = toy_study(tmp_path, name)
    launch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "launch",
            str(study_file),
            "--storage",
            pg_url,
            "--workers",
            "8",
            "--n-trials",
            "8",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _SPAWNED.append(launch)
    try:
        _, err = launch.communicate(timeout=240)
    finally:
        stop.set()
        watcher.join(timeout=10)
        engine.dispose()
    assert launch.returncode == 0, err
    assert no_storage_errors(err), err
    others = (f"hpo-{launch.pid}", f"hpo-{os.getpid()}")  # the launcher, this test
    workers = {app: n for app, n in peak.items() if app not in others}
    assert len(workers) == 8, f"saw {sorted(peak)}; expected the launcher and 8 workers"
    assert max(workers.values()) <= CONNECTIONS_PER_WORKER, peak
    assert peak_total <= limit
    assert check_budget(trials(name, pg_url), 8) == []


# ---- SQLite with several local workers ---------------------------------------------------


def test_four_sqlite_workers_never_see_a_locked_database(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'storage' / 'many.db'}"
    study_file = toy_study(tmp_path, name)
    out = hpo(
        "launch", str(study_file), "--storage", url, "--workers", "4", "--n-trials", "8", env=env
    )
    assert out.returncode == 0, out.stderr  # the workers' stderr comes through launch's
    assert no_storage_errors(out.stderr), out.stderr
    assert check_budget(trials(name, url), 8) == []


# ---- the gRPC storage proxy --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxy(request: pytest.FixtureRequest, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """`hpo storage-proxy` in front of the backend named by the test's parameter:
    (grpc URL, backend URL)."""
    pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio: pip install '.[grpc]'")
    if request.param == "postgresql":
        backend = request.getfixturevalue("pg_url")
    else:
        backend = f"sqlite:///{Path.cwd() / 'storage' / 'behind-proxy.db'}"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo", "storage-proxy", "--storage", backend, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=120)
        client.close()
        yield f"grpc://127.0.0.1:{port}", backend
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "storage proxy stopped" in err, err


@pytest.mark.parametrize(
    "proxy", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_two_workers_through_the_grpc_proxy(
    tmp_path: Path, env: dict[str, str], proxy: tuple[str, str], name: str
) -> None:
    grpc_url, backend = proxy
    study_file = toy_study(tmp_path, name)
    out = hpo(
        "launch",
        str(study_file),
        "--storage",
        grpc_url,
        "--workers",
        "2",
        "--n-trials",
        "4",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    ts = trials(name, backend)  # the same study, read from the database itself
    assert check_budget(ts, 4) == []
    assert all(HEARTBEAT_ATTR in t.system_attrs for t in ts), "heartbeats reach the proxy"
    assert len(list((tmp_path / "artifacts").rglob("*"))) > 4  # base model, trial weights


def test_grpc_heartbeat_fails_a_silent_trial_and_retries_it() -> None:
    """Optuna's proxy client has no heartbeat: ours keeps one in a trial attribute, and a
    trial whose attribute stops changing for grace_period seconds is failed and retried."""
    pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio: pip install '.[grpc]'")
    port = free_port()
    server = compat.grpc_proxy_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port)
    server.start()
    try:
        section = StorageSection(heartbeat_interval=1, grace_period=2)
        storage = open_storage(f"grpc://127.0.0.1:{port}", section)
        study = optuna.create_study(storage=storage, study_name="beat")
        sid = compat.study_id(study)
        alive, dead = (storage.create_new_trial(sid) for _ in range(2))
        storage.set_trial_param(dead, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))
        storage.record_heartbeat(dead)
        assert compat.stale_trial_ids(storage, sid) == []
        deadline = time.monotonic() + storage.grace_period + 1.5
        while time.monotonic() < deadline:
            storage.record_heartbeat(alive)
            time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)
        by_id = {compat.trial_id(t): t for t in study.get_trials()}
        assert by_id[alive].state == TS.RUNNING
        assert by_id[dead].state == TS.FAIL
        retry = [t for t in by_id.values() if t.system_attrs.get("failed_trial") is not None]
        assert len(retry) == 1 and retry[0].state == TS.WAITING
        assert retry[0].params == {"x": 0.5}
    finally:
        server.stop(0)


def test_grpc_url_must_name_host_and_port() -> None:
    from hpo.errors import UserError

    with pytest.raises(UserError, match=re.escape("grpc://HOST:PORT")):
        open_storage("grpc://:13000/studies")


def test_storage_proxy_refuses_a_busy_port(tmp_path: Path) -> None:
    """gRPC itself would bind a busy port (SO_REUSEPORT) and share its clients."""
    pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio: pip install '.[grpc]'")
    from hpo.errors import UserError
    from hpo.storage.proxy import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match="Address already in use"):
            serve(f"sqlite:///{tmp_path / 'x.db'}", host="127.0.0.1", port=port)
