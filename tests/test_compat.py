"""The private Optuna and optuna-dashboard internals in hpo.storage.compat still exist,
take the arguments we pass and do what we rely on, on a real SQLite study.

A failure here after an upgrade names the versions installed: fix hpo/storage/compat.py
(the only place that touches these internals), not its callers.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna.storages import RDBStorage

from hpo.storage import compat

# A heartbeat storage used without Study.optimize, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

VERSIONS = f"optuna {optuna.__version__}, optuna-dashboard {optuna_dashboard.__version__}"


def changed(what: str, detail: str) -> str:
    return (
        f"{what} changed or is gone in {VERSIONS} ({detail}); hpo.storage.compat relies on "
        "it: adapt hpo/storage/compat.py or pin the older version"
    )


def internal(dotted: str) -> object:
    """module.attr[.attr], imported: a clear failure if the module or name is gone."""
    module, _, names = dotted.partition(":")
    try:
        obj: object = importlib.import_module(module)
    except ImportError as err:
        pytest.fail(changed(module, f"cannot import: {err}"))
    for name in names.split("."):
        if not hasattr(obj, name):
            pytest.fail(changed(f"{module}:{names}", f"no attribute {name!r}"))
        obj = getattr(obj, name)
    return obj


def params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        ("optuna.storages._heartbeat:BaseHeartbeat._get_stale_trial_ids", ["self", "study_id"]),
        ("optuna.storages._heartbeat:is_heartbeat_enabled", ["storage"]),
        ("optuna.storages._rdb.storage:RDBStorage._get_stale_trial_ids", ["self", "study_id"]),
        ("optuna_dashboard._note:get_note_from_system_attrs", ["system_attrs", "trial_id"]),
        (
            "optuna_dashboard._note:save_note_with_version",
            ["storage", "study_id", "trial_id", "ver", "body"],
        ),
    ],
)
def test_internals_keep_their_signatures(dotted: str, expected: list[str]) -> None:
    got = params(internal(dotted))
    assert got == expected, changed(dotted, f"parameters {got}, expected {expected}")


def test_grpc_make_server_keeps_its_signature() -> None:
    pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio: pip install '.[grpc]'")
    dotted = "optuna.storages._grpc.server:make_server"
    got = params(internal(dotted))[:3]
    assert got == ["storage", "host", "port"], changed(dotted, f"parameters {got}")


def test_heartbeat_base_class_asks_for_what_our_grpc_storage_implements() -> None:
    from hpo.storage.proxy_client import GrpcHeartbeatStorage

    base = internal("optuna.storages._heartbeat:BaseHeartbeat")
    assert base is compat.BaseHeartbeat
    abstract = set(getattr(base, "__abstractmethods__", ()))
    ours = {
        "record_heartbeat",
        "_get_stale_trial_ids",
        "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback",
    }
    assert abstract == ours, changed("BaseHeartbeat", f"abstract methods {sorted(abstract)}")
    assert issubclass(RDBStorage, base), changed("RDBStorage", "no longer a BaseHeartbeat")
    left = set(getattr(GrpcHeartbeatStorage, "__abstractmethods__", ()))
    assert not left, changed("BaseHeartbeat", f"GrpcHeartbeatStorage lacks {sorted(left)}")


def test_cached_storage_calls_are_the_private_ones_it_makes() -> None:
    """Optuna's _CachedStorage calls these RDBStorage methods directly; ours retry them."""
    from hpo.storage.reconnect import ReconnectingRDBStorage

    cached = internal("optuna.storages._cached_storage:_CachedStorage")
    source = inspect.getsource(cached)  # type: ignore[arg-type]
    made = {
        name
        for name in dir(RDBStorage)
        if name.startswith("_") and not name.startswith("__") and f"._backend.{name}(" in source
    }
    assert made == set(compat.CACHED_STORAGE_CALLS), changed(
        "_CachedStorage", f"calls private RDBStorage methods {sorted(made)}"
    )
    for name in compat.CACHED_STORAGE_CALLS:
        assert hasattr(getattr(ReconnectingRDBStorage, name), "__wrapped__"), name


def test_optimize_logger_reports_failed_trials(caplog: pytest.LogCaptureFixture) -> None:
    logger = compat.optimize_logger()
    logger.addHandler(caplog.handler)
    try:
        study = optuna.create_study()

        def objective(trial: optuna.Trial) -> float:
            raise ValueError("boom")

        with caplog.at_level(logging.WARNING, logger=compat.OPTIMIZE_LOGGER):
            study.optimize(objective, n_trials=1, catch=(ValueError,))
    finally:
        logger.removeHandler(caplog.handler)
    failed = [r for r in caplog.records if r.name == compat.OPTIMIZE_LOGGER]
    assert failed and failed[0].exc_info is not None, changed(
        f"logger {compat.OPTIMIZE_LOGGER!r}", "no longer logs a failed trial with its traceback"
    )


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=1, grace_period=1)
    return optuna.create_study(study_name="compat", storage=storage)


def test_ids_and_storage_on_a_real_study(study: optuna.Study) -> None:
    live = study.ask()
    study.tell(live, 1.0)
    frozen = study.trials[0]
    storage, sid = compat.storage_of(study), compat.study_id(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert sid == storage.get_study_id_from_name("compat")
    public = storage.get_trial_id_from_study_id_trial_number(sid, frozen.number)
    assert compat.trial_id(live) == compat.trial_id(frozen) == public


def test_stale_trial_ids_and_heartbeat_enabled(study: optuna.Study) -> None:
    storage, sid = compat.storage_of(study), compat.study_id(study)
    assert compat.heartbeat_enabled(storage)
    assert not compat.heartbeat_enabled(optuna.storages.InMemoryStorage())
    trial = study.ask()
    storage.record_heartbeat(compat.trial_id(trial))  # type: ignore[attr-defined]
    assert compat.stale_trial_ids(storage, sid) == []
    time.sleep(2.5)  # past the grace period (SQLite's clock has whole seconds)
    assert compat.stale_trial_ids(storage, sid) == [compat.trial_id(trial)]
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # only looked, not failed


def test_notes_round_trip_with_the_public_dashboard_api(study: optuna.Study) -> None:
    trial = study.ask()
    storage, sid, tid = compat.storage_of(study), compat.study_id(study), compat.trial_id(trial)
    assert compat.get_note(storage.get_study_system_attrs(sid), tid) == {"version": 0, "body": ""}
    body = "### note\n" + "x" * 5000  # longer than one system attr: stored in pieces
    compat.save_note(storage, sid, tid, 1, body)
    note = compat.get_note(storage.get_study_system_attrs(sid), tid)
    assert note == {"version": 1, "body": body}, changed("optuna_dashboard._note", str(note)[:80])
    assert optuna_dashboard.get_note(trial) == body  # what the dashboard itself reads
    optuna_dashboard.save_note(trial, "a person's edit")  # public API: next version
    assert compat.get_note(storage.get_study_system_attrs(sid), tid)["version"] == 2


def test_grpc_proxy_server_serves_a_storage() -> None:
    pytest.importorskip("grpc", reason="the gRPC proxy needs grpcio: pip install '.[grpc]'")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = compat.grpc_proxy_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port)
    server.start()
    try:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=30)
        optuna.create_study(study_name="over-grpc", storage=client)
        assert optuna.study.get_all_study_names(client) == ["over-grpc"]
    finally:
        server.stop(0)
