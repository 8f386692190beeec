"""Study storage: which SQL database, how to connect to it, and where artifacts go.

SQLite is the embedded default (a file under `storage/`); several local workers share it
safely with WAL journaling and a generous busy timeout. Any SQLAlchemy URL works for
many machines (PostgreSQL with psycopg), and `grpc://host:port` reaches an `hpo
storage-proxy` in front of one for hundreds of workers. The URL may come from an
environment variable so that no password sits in a study file, and it is never printed
unmasked.

A database that goes away for a moment (a restart, a failover, a dropped connection) must
not kill a worker that has been training for an hour: every storage call retries while
the database is unreachable, for up to RECONNECT_WINDOW seconds, and the heartbeat thread
skips a beat instead of dying (see `_Reconnecting`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.paths import check_writable_dir
from hpo.service.attrs import HEARTBEAT_ATTR
from hpo.service.compat import CACHED_STORAGE_CALLS, BaseHeartbeat, trial_id
from hpo.service.redact import mask_url, scrub, secrets_of, unredacted
from hpo.service.storage_url import DEFAULT_DIR

GRPC_PORT = 13000
# Pool sizes per engine. A worker process opens two engines: a read-only probe of the
# study (held while it runs; opening an RDBStorage leaves 2 connections idle in its pool)
# and its trial engine, on which at most two connections are in use at once (the trial
# thread and the heartbeat thread). So a worker holds 4 connections in practice (measured
# in pg_stat_activity by tests/test_postgres.py) and never more than
# CONNECTIONS_PER_WORKER = 2 engines * (2 + 2) = 8. PostgreSQL's default max_connections =
# 100 leaves 97 for ordinary roles: about 24 workers fit in practice and 12 at the bound.
# Beyond that, raise max_connections or put `hpo storage-proxy` in front.
POOL = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 300}
CONNECTIONS_PER_WORKER = 2 * (POOL["pool_size"] + POOL["max_overflow"])
# libpq settings for PostgreSQL unless the URL names them: fail a connection attempt to a
# dead host in 10 s (not the TCP default of minutes) and notice a vanished server on an
# idle connection within about a minute; the application name lets `pg_stat_activity`
# tell the processes apart.
PG_CONNECT = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# How long a storage call keeps retrying while the database is unreachable: longer than a
# restart or a managed database's failover, shorter than a silent hang.
RECONNECT_WINDOW = 120.0

_log = logging.getLogger("hpo.service.storage")


def mask(url: str) -> str:
    """The URL with its password and secret query parameters replaced by ***: the only
    form that is ever printed or stored (see hpo.service.redact)."""
    return mask_url(url)


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL; None for other URLs and in-memory databases."""
    if not url.startswith("sqlite:///"):
        return None
    name = url.removeprefix("sqlite:///").split("?", 1)[0]
    if name in ("", ":memory:") or name.startswith("file:"):
        return None
    return Path(name)


def check_url(url: str) -> None:
    """A URL SQLAlchemy can parse, with a port in range, a database kind it knows and, for
    SQLite, a folder the file can be created in. Connects to nothing, creates nothing."""
    if url.startswith("grpc://"):
        parse_grpc_url(url)
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError

    example = "e.g. sqlite:///storage/study.db or postgresql+psycopg://user@host/db"
    try:
        parsed = make_url(url)
        port = parsed.port
    except Exception as err:  # ArgumentError; ValueError for a port that is not a number
        reason = scrub(_short(err), secrets_of(url))
        raise UserError(f"storage {mask(url)}: not a database URL ({reason}); {example}") from None
    if port is not None and not 0 < port < 65536:
        raise UserError(f"storage {mask(url)}: port {port} is not in 1-65535")
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise UserError(
            f"storage {mask(url)}: unknown database kind {parsed.drivername!r}; {example}"
        ) from None
    except ImportError as err:
        raise UserError(
            f"storage {mask(url)}: the database driver is missing ({err}); for PostgreSQL "
            "install psycopg: pip install 'faithful-sae-hpo[postgres]'"
        ) from None
    path = sqlite_path(url)
    if path is not None:
        check_writable_dir(path.parent, f"storage {mask(url)}: folder")
        if path.is_dir():
            raise UserError(f"storage {mask(url)}: {path} is a folder, not a database file")


def check_existing_sqlite(url: str) -> None:
    """For commands that only read or join a study (status, worker, report, export, a
    dashboard): the SQLite file must already be a study database. Opening a missing or
    empty file would create it, or write a schema into it, and then report "no studies"."""
    import sqlite3

    path = sqlite_path(url)
    if path is None:
        return
    where = f"storage {mask(url)}"
    if not path.exists():
        raise UserError(
            f"{where}: {path} does not exist; nothing was launched there (hpo launch creates "
            "it), or give the right --storage"
        )
    if path.is_dir():
        raise UserError(f"{where}: {path} is a folder, not a database file")
    try:
        with path.open("rb") as fh:
            header = fh.read(16)
    except OSError as err:
        raise UserError(f"{where}: cannot read {path} ({err.strerror})") from None
    if not header:
        raise UserError(f"{where}: {path} is empty, not a study database (hpo launch creates one)")
    if header != b"SQLite format 3\x00":
        raise UserError(f"{where}: {path} is not a SQLite database")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise UserError(f"{where}: cannot read {path} ({err})") from None
    if "studies" not in tables:
        raise UserError(f"{where}: {path} is a SQLite database without Optuna studies in it")


def engine_kwargs(url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """SQLAlchemy engine arguments: ours, then the study file's (its connect_args merge)."""
    from sqlalchemy.engine import make_url

    extra = unredacted(dict(extra or {}))  # a stored study file's "***" is no password
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        kwargs = dict(POOL)
        kwargs["connect_args"] = {}
        parsed = make_url(url)
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "psycopg",
            "psycopg2",
        ):  # libpq settings: other drivers (pg8000, asyncpg) take none of these
            named = parsed.query
            defaults = {**PG_CONNECT, "application_name": f"hpo-{os.getpid()}"}
            kwargs["connect_args"] = {k: v for k, v in defaults.items() if k not in named}
    kwargs["connect_args"].update(extra.pop("connect_args", {}))
    kwargs.update(extra)
    return kwargs


def _sqlite_wal(engine: Any) -> None:
    """WAL lets readers and one writer proceed together: no 'database is locked'.

    RDBStorage opens its engine and pools a connection (creating the schema) before we
    see the engine, so a listener alone would never run on that pooled connection (and
    the file stayed in journal mode "delete"). Hence: listen, drop the pool, and connect
    once, which switches the file to WAL for good (the mode is stored in the file).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=120000")
        cur.close()

    engine.dispose()
    with engine.connect():
        pass


def open_storage(
    url: str,
    section: StorageSection | None = None,
    *,
    heartbeat: bool = True,
    create: bool = True,
) -> BaseStorage:
    """An Optuna storage with heartbeats (dead workers' trials fail and are retried) that
    rides out a database restart: an RDBStorage, or a gRPC proxy client for grpc://.

    `create=False` for commands that read or join: a SQLite file must exist already."""
    check_url(url)
    if not create:
        check_existing_sqlite(url)
    section = section or StorageSection()
    beat: dict[str, Any] = {}
    if heartbeat:
        beat = {
            "heartbeat_interval": section.heartbeat_interval,
            "grace_period": section.grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=section.max_retry
            ),
        }
    if url.startswith("grpc://"):
        return _grpc(url, beat)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    storage = _connect(url, engine_kwargs(url, section.engine_kwargs), beat)
    if url.startswith("sqlite"):
        _sqlite_wal(storage.engine)
    return storage


def _connect(url: str, engine: dict[str, Any], kwargs: dict[str, Any]) -> RDBStorage:
    """RDBStorage, retrying the race where two processes create a fresh schema at once."""
    import warnings

    from sqlalchemy.exc import IntegrityError, OperationalError

    secrets = secrets_of(url, engine)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return ReconnectingRDBStorage(url, engine_kwargs=engine, **kwargs)
        except ImportError as err:
            raise UserError(
                f"storage {mask(url)}: the database driver is missing ({err}); for PostgreSQL "
                "install psycopg: pip install 'faithful-sae-hpo[postgres]'"
            ) from None
        except (IntegrityError, OperationalError) as err:
            # Two processes creating a fresh schema at once: one sees a duplicate row,
            # a table that "already exists", or a locked SQLite file. Retry; it is there.
            text = str(err)
            racing = isinstance(err, IntegrityError) or "locked" in text or "already exists" in text
            if not racing or attempt == 4:
                reason = scrub(_short(err), secrets)
                raise UserError(f"storage {mask(url)}: cannot connect: {reason}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as err:  # sqlalchemy.exc.ArgumentError, a bad URL, ...
            reason = scrub(_short(err), secrets)
            raise UserError(f"storage {mask(url)}: cannot connect: {reason}") from None
    raise AssertionError("unreachable")


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]


# ---- riding out a database restart ----------------------------------------------------
#
# What happens without this (PostgreSQL restarted while a worker trains): pool_pre_ping
# replaces connections that died while idle in the pool, but any storage call made while
# the server is down or starting (trial.report, the final tell, the worker loop's
# get_trials) fails: RDBStorage turns the OperationalError into StorageInternalError,
# Optuna's _run_trial then fails the trial or raises from its cleanup, and the worker
# exits. The heartbeat thread is worse: an exception kills it silently, the trial trains
# on without heartbeats, and another worker fails it as stale and retries it.
#
# So each storage method retries while the failure is a lost or refused connection (or a
# locked SQLite file), never on bad data; nested calls retry only at the outermost level.
# For a grace period after the database was last seen away, no trial is judged stale:
# nobody could beat meanwhile, and live trials would be failed and retried for nothing.
# A write whose reply was lost may already have happened: a repeated upsert is harmless,
# and a repeated state change is recognised below. (An insert whose commit reply is lost,
# create_new_trial, could leave an extra trial; the window is the commit's round trip.)

_RETRIED = (
    *(
        name
        for name, member in vars(BaseStorage).items()
        if callable(member)
        and not name.startswith("_")
        and name not in ("remove_session", "check_trial_is_updatable")
    ),
    *CACHED_STORAGE_CALLS,  # what optuna's _CachedStorage calls on RDBStorage directly
)
_outermost = threading.local()


class _Reconnecting:
    """Mixin for a storage class: retry its calls while the database is unreachable."""

    url: str
    _last_unreachable: float | None = None  # time.monotonic() of the last failed attempt

    def _transient(self, err: BaseException) -> bool:
        raise NotImplementedError

    def _recently_unreachable(self) -> bool:
        """Whether the database was away less than a grace period (and a beat) ago. No
        worker could record a heartbeat meanwhile: judging trials stale now would fail
        every live trial whose worker has not beaten again yet."""
        interval = getattr(self, "heartbeat_interval", None) or 0
        grace = getattr(self, "grace_period", None) or 2 * interval
        last = self._last_unreachable
        return last is not None and time.monotonic() - last < grace + interval


def _retrying(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_outermost, "active", False):
            return method(self, *args, **kwargs)
        _outermost.active = True
        try:
            return _with_retries(self, name, lambda: method(self, *args, **kwargs), args, kwargs)
        finally:
            _outermost.active = False

    return call


def _with_retries(
    storage: Any, name: str, call: Callable[[], Any], args: tuple, kwargs: dict[str, Any]
) -> Any:
    started: float | None = None
    delay = 0.25
    while True:
        try:
            result = call()
        except optuna.exceptions.UpdateFinishedTrialError:
            if started is not None and name == "set_trial_state_values":
                return _state_already_set(storage, *args, **kwargs)
            raise
        except Exception as err:
            if not storage._transient(err):
                raise
            now = time.monotonic()
            storage._last_unreachable = now
            if started is None:
                started = now
                _log.warning(
                    "storage %s: %s; retrying for up to %.0f s",
                    mask(storage.url),
                    _reason(err, storage.url),
                    RECONNECT_WINDOW,
                )
            elif now - started > RECONNECT_WINDOW:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 4.0)
            continue
        if started is not None:
            _log.warning(
                "storage %s reconnected after %.1f s", mask(storage.url), time.monotonic() - started
            )
        return result


def _state_already_set(
    storage: Any, trial_id: int, state: optuna.trial.TrialState, values: Any = None
) -> bool:
    """The attempt before the outage finished the trial and only the reply was lost."""
    trial = storage.get_trial(trial_id)
    if trial.state == state and (values is None or list(trial.values or []) == list(values)):
        return True
    raise optuna.exceptions.UpdateFinishedTrialError(
        f"trial {trial.number} is already {trial.state.name}"
    )


def _reason(err: BaseException, url: str) -> str:
    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) else err
    return scrub(_short(cause if isinstance(cause, Exception) else err)[:200], secrets_of(url))


def _beat(storage: Any, record: Callable[[], None]) -> None:
    """One heartbeat, retried for up to one interval; a missed beat is logged, and the
    heartbeat thread lives on (a dead one would get a live trial failed as stale)."""
    deadline = time.monotonic() + (storage.get_heartbeat_interval() or 1)
    while True:
        try:
            record()
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # the trial is over (failed as stale elsewhere, or just told)
        except Exception as err:
            if storage._transient(err):
                storage._last_unreachable = time.monotonic()
            if not storage._transient(err) or time.monotonic() >= deadline:
                _log.warning(
                    "storage %s: heartbeat missed (%s)",
                    mask(storage.url),
                    _reason(err, storage.url),
                )
                return
            time.sleep(0.25)


def _reconnecting(cls: type) -> type:
    for name in _RETRIED:
        if hasattr(cls, name):
            setattr(cls, name, _retrying(name, getattr(cls, name)))
    return cls


@_reconnecting
class ReconnectingRDBStorage(_Reconnecting, RDBStorage):
    """Optuna's RDBStorage whose calls survive a database restart (see above)."""

    def _transient(self, err: BaseException) -> bool:
        from sqlalchemy.exc import (
            DBAPIError,
            DisconnectionError,
            InterfaceError,
            OperationalError,
            PendingRollbackError,
        )

        cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) else err
        # A session whose connection died mid-transaction says PendingRollbackError until
        # it is rolled back, which Optuna's session scope does before raising.
        if isinstance(cause, PendingRollbackError | DisconnectionError):
            return True
        if not isinstance(cause, DBAPIError):
            return False
        if cause.connection_invalidated:
            return True
        if self.url.startswith("sqlite"):
            return isinstance(cause, OperationalError) and (
                "locked" in str(cause) or "busy" in str(cause)
            )
        return isinstance(cause, OperationalError | InterfaceError)

    def record_heartbeat(self, trial_id: int) -> None:
        _beat(self, lambda: RDBStorage.record_heartbeat(self, trial_id))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self._recently_unreachable():
            return []
        return super()._get_stale_trial_ids(study_id)


# ---- the gRPC storage proxy -----------------------------------------------------------


def parse_grpc_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or GRPC_PORT
    except ValueError:
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise UserError(
            f"storage {mask(url)}: a gRPC storage URL is grpc://HOST:PORT (the address of "
            "`hpo storage-proxy`), e.g. grpc://10.0.0.5:13000"
        )
    return parts.hostname, port


def _grpc(url: str, beat: dict[str, Any]) -> BaseStorage:
    import warnings

    host, port = parse_grpc_url(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = GrpcHeartbeatStorage(host=host, port=port, **beat)
            storage.wait_server_ready(timeout=30)
    except ImportError as err:
        raise UserError(
            f"storage {url}: gRPC needs grpcio ({err}); pip install 'faithful-sae-hpo[grpc]'"
        ) from None
    except ConnectionError:
        raise UserError(
            f"storage {url}: no storage proxy answers at {host}:{port} within 30 s; start "
            f"one next to the database with: hpo storage-proxy --storage DATABASE_URL "
            f"--host {host} --port {port}"
        ) from None
    return storage


@_reconnecting
class GrpcHeartbeatStorage(_Reconnecting, optuna.storages.GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC proxy client, with the heartbeats it lacks.

    GrpcStorageProxy is not a BaseHeartbeat, so through it a killed worker's trial would
    stay RUNNING for ever (and the budget would wait on it). Here a worker's heartbeat
    thread writes the time into a trial system attribute, and a trial is stale once an
    observer has seen that attribute unchanged for `grace_period` seconds of its own
    clock: no clocks need to agree across machines. Optuna's own fail_stale_trials and
    RetryHeartbeatStaleTrialCallback then work unchanged.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable[..., None] | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.url = f"grpc://{host}:{port}"
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * (heartbeat_interval or 0)
        self._stale_callback = heartbeat_stale_trial_callback
        self._seen: dict[int, tuple[Any, float]] = {}

    def _transient(self, err: BaseException) -> bool:
        import grpc

        return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE

    def record_heartbeat(self, trial_id: int) -> None:
        set_attr = optuna.storages.GrpcStorageProxy.set_trial_system_attr
        _beat(self, lambda: set_attr(self, trial_id, HEARTBEAT_ATTR, time.time()))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self._recently_unreachable():
            return []
        now = time.monotonic()
        running = self.get_all_trials(
            study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        stale, seen = [], {}
        for t in running:
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            previous = self._seen.get(trial_id(t))
            since = previous[1] if previous and previous[0] == beat else now
            seen[trial_id(t)] = (beat, since)
            if now - since > self.grace_period:
                stale.append(trial_id(t))
        self._seen = seen
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
        return self._stale_callback


def artifact_target(url: str, section: StorageSection | None = None) -> str:
    """Where base models and plots go: a folder beside a SQLite file, or what the study
    names (a path, or s3://bucket/prefix through Optuna's Boto3 store). Through a gRPC
    proxy the study must name one: workers on other machines cannot share a default.
    A folder must be one we can write into (checked, not created)."""
    target = section.artifacts if section and section.artifacts else None
    if target is None:
        if url.startswith("sqlite:///"):
            db = Path(url.removeprefix("sqlite:///"))
            target = str(db.parent / "artifacts" / db.stem)
        elif url.startswith("grpc://"):
            raise UserError(
                "storage.artifacts: a study served through a gRPC storage proxy needs an "
                "artifact store every worker reaches; set storage.artifacts in the study file "
                "to a shared folder (e.g. /shared/hpo-artifacts) or an s3://bucket"
            )
        else:
            target = str(DEFAULT_DIR / "artifacts")
    if not target.startswith("s3://"):
        check_writable_dir(target, "storage.artifacts:")
    return target


def artifact_store(url: str, section: StorageSection | None = None) -> Any:
    """The study's artifact store (see `artifact_target`), its folder created if need be."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    target = artifact_target(url, section)
    if target.startswith("s3://"):
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        store = Boto3ArtifactStore(bucket)
        return PrefixedArtifactStore(store, prefix.strip("/")) if prefix.strip("/") else store
    Path(target).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(target)


class PrefixedArtifactStore:
    """An Optuna artifact store that keeps its artifacts under `prefix/` of another one
    (Optuna's Boto3 store writes to the bucket's root)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(f"{self.prefix}/{artifact_id}")

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(f"{self.prefix}/{artifact_id}", content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(f"{self.prefix}/{artifact_id}")
