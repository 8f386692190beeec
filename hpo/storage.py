"""Study storage: which SQL database, how to connect to it, and where artifacts go.

SQLite is the embedded default (a file under `storage/`); several local workers share it
safely with WAL journaling and a generous busy timeout. Any SQLAlchemy URL works for
many machines (PostgreSQL with psycopg). The URL may come from an environment variable so
that no password sits in a study file, and it is never printed unmasked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from hpo.config import StorageSection
from hpo.errors import UserError

STORAGE_ENV = "HPO_STORAGE_URL"
DEFAULT_DIR = Path("storage")
# Pool sizes per worker process: a worker uses one connection for trials and one for
# its heartbeat thread, so 2 + 2 overflow is ample and 8 workers need at most 32.
POOL = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 300}


def resolve_url(section: StorageSection, study_name: str, cli_url: str | None = None) -> str:
    """--storage, else the env var the study names, else $HPO_STORAGE_URL, else its url,
    else the embedded SQLite file storage/<study>.db."""
    if cli_url:
        return cli_url
    if section.url_env:
        url = os.environ.get(section.url_env)
        if not url:
            raise UserError(
                f"storage.url_env: environment variable {section.url_env} is not set; "
                "export it with the storage URL, or pass --storage"
            )
        return url
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    return section.url or f"sqlite:///{DEFAULT_DIR / (study_name + '.db')}"


def mask(url: str) -> str:
    """The URL with its password replaced by ***: the only form that is ever printed."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        return url.split("@")[-1] if "@" in url else url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def engine_kwargs(url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        kwargs = dict(POOL)
    kwargs.update(extra or {})
    return kwargs


def _sqlite_wal(engine: Any) -> None:
    """WAL lets readers and one writer proceed together: no 'database is locked'."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=120000")
        cur.close()


def open_storage(
    url: str,
    section: StorageSection | None = None,
    *,
    heartbeat: bool = True,
) -> RDBStorage:
    """An Optuna RDBStorage with heartbeats (dead workers' trials fail and are retried)."""
    section = section or StorageSection()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": section.heartbeat_interval,
            "grace_period": section.grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=section.max_retry
            ),
        }
    storage = _connect(url, engine_kwargs(url, section.engine_kwargs), kwargs)
    if url.startswith("sqlite"):
        _sqlite_wal(storage.engine)
    return storage


def _connect(url: str, engine: dict[str, Any], kwargs: dict[str, Any]) -> RDBStorage:
    """RDBStorage, retrying the race where two processes create a fresh schema at once."""
    import warnings

    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, **kwargs)
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
                raise UserError(f"storage {mask(url)}: cannot connect: {_short(err)}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as err:  # sqlalchemy.exc.ArgumentError, a bad URL, ...
            raise UserError(f"storage {mask(url)}: cannot connect: {_short(err)}") from None
    raise AssertionError("unreachable")


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]


def artifact_store(url: str, section: StorageSection | None = None) -> Any:
    """Where base models and plots go: a folder beside a SQLite file, or what the study
    names (a path, or s3://bucket/prefix through Optuna's Boto3 store)."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    target = section.artifacts if section and section.artifacts else None
    if target is None:
        if url.startswith("sqlite:///"):
            db = Path(url.removeprefix("sqlite:///"))
            target = str(db.parent / "artifacts" / db.stem)
        else:
            target = str(DEFAULT_DIR / "artifacts")
    if target.startswith("s3://"):
        bucket, _, _prefix = target.removeprefix("s3://").partition("/")
        return Boto3ArtifactStore(bucket)
    Path(target).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(target)
