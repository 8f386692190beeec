"""Study storage: which SQL database, how to connect to it, and where artifacts go.

SQLite is the embedded default (a file under `storage/`); several local workers share it
safely with WAL journaling and a generous busy timeout. Any SQLAlchemy URL works for
many machines (PostgreSQL with psycopg), and `grpc://host:port` reaches an `hpo
storage-proxy` in front of one for hundreds of workers. The URL may come from an
environment variable so that no password sits in a study file, and it is never printed
unmasked.

A database that goes away for a moment must not kill a worker that has been training for
an hour: the storage classes opened here retry while it is away (hpo.storage.reconnect).
Artifacts live in hpo.storage.artifacts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.paths import check_writable_dir
from hpo.storage.proxy_client import grpc_storage, parse_grpc_url
from hpo.storage.reconnect import ReconnectingRDBStorage, short_error
from hpo.storage.redact import mask_url, scrub, secrets_of, unredacted

# Pool sizes per engine. A worker process opens two engines: a read-only probe of the
# study (held while it runs; opening an RDBStorage leaves 2 connections idle in its pool)
# and its trial engine, on which at most two connections are in use at once (the trial
# thread and the heartbeat thread). So a worker holds 4 connections in practice
# (tests/test_postgres.py counts them in pg_stat_activity) and never more than
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

_log = logging.getLogger("hpo.storage.engine")


def mask(url: str) -> str:
    """The URL with its password and secret query parameters replaced by ***: the only
    form that is ever printed or stored (see hpo.storage.redact)."""
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
        reason = scrub(short_error(err), secrets_of(url))
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
            header = fh.read(100)
    except OSError as err:
        raise UserError(f"{where}: cannot read {path} ({err.strerror})") from None
    if not header:
        raise UserError(f"{where}: {path} is empty, not a study database (hpo launch creates one)")
    if header[:16] != b"SQLite format 3\x00":
        raise UserError(f"{where}: {path} is not a SQLite database")
    if sqlite_truncated(header, path.stat().st_size):
        raise UserError(
            f"{where}: {path} is truncated (shorter than its header says), not a whole study "
            "database; restore it from a copy"
        )
    # A file in WAL mode opened even read-only gets -wal and -shm files beside it (left
    # there when the read fails). With no -wal file, everything is in the file itself, so
    # open it as immutable: SQLite then creates nothing. A -wal file means a writer is (or
    # was) at work: read through it, as the workers' own connections do.
    wal = path.with_name(path.name + "-wal").exists()
    try:
        mode = "mode=ro" if wal else "immutable=1"
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise UserError(f"{where}: cannot read {path} ({err})") from None
    if "studies" not in tables:
        raise UserError(f"{where}: {path} is a SQLite database without Optuna studies in it")


def sqlite_truncated(header: bytes, size: int) -> bool:
    """Whether a SQLite file of `size` bytes is shorter than its 100-byte header says:
    a header cut short, a first page cut short, or fewer pages than the header counts
    (a count SQLite itself trusts only while bytes 92-95 match the change counter)."""
    if len(header) < 100:
        return True
    raw = int.from_bytes(header[16:18], "big")
    page_size = 65536 if raw == 1 else raw
    if size < page_size:
        return True
    pages = int.from_bytes(header[28:32], "big")
    valid = header[92:96] == header[24:28]
    return valid and pages * page_size > size


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
    """WAL lets readers and one writer proceed together: no 'database is locked'; and
    each transaction takes the write lock when it begins, so a read-then-write is atomic.

    The second is what hands a queued trial to one worker only: Optuna moves a trial
    from WAITING to RUNNING after reading its state under SELECT ... FOR UPDATE, which
    SQLite ignores, and Python's sqlite3 begins the transaction only at the UPDATE, so
    two workers could both read WAITING and both run the trial. SQLAlchemy's recipe for
    pysqlite: no implicit BEGIN from the driver, our own BEGIN IMMEDIATE instead.

    RDBStorage opens its engine and pools a connection (creating the schema) before we
    see the engine, so a listener alone would never run on that pooled connection (and
    the file stayed in journal mode "delete"). Hence: listen, drop the pool, and connect
    once, which switches the file to WAL for good (the mode is stored in the file).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN would come too late
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=120000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

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
        return grpc_storage(url, beat)
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
                reason = scrub(short_error(err), secrets)
                raise UserError(f"storage {mask(url)}: cannot connect: {reason}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as err:  # sqlalchemy.exc.ArgumentError, a bad URL, ...
            reason = scrub(short_error(err), secrets)
            raise UserError(f"storage {mask(url)}: cannot connect: {reason}") from None
    raise AssertionError("unreachable")
