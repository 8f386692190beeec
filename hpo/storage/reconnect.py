"""Riding out a database restart: storage classes whose calls retry while it is away.

A database that goes away for a moment (a restart, a failover, a dropped connection) must
not kill a worker that has been training for an hour: every storage call retries while
the database is unreachable, for up to RECONNECT_WINDOW seconds, and the heartbeat thread
skips a beat instead of dying. `ReconnectingRDBStorage` is Optuna's RDBStorage so made;
`GrpcHeartbeatStorage` (hpo.storage.proxy_client) is its gRPC proxy client, with
heartbeats Optuna's lacks.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from hpo.storage.compat import CACHED_STORAGE_CALLS
from hpo.storage.redact import mask_url, scrub, secrets_of

# How long a storage call keeps retrying while the database is unreachable: longer than a
# restart or a managed database's failover, shorter than a silent hang.
RECONNECT_WINDOW = 120.0

_log = logging.getLogger("hpo.storage")


def mask(url: str) -> str:
    return mask_url(url)


def short_error(err: BaseException) -> str:
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


class Reconnecting:
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
    storage: Any, name: str, call: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
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
    return scrub(short_error(cause if isinstance(cause, Exception) else err)[:200], secrets_of(url))


def beat_once(storage: Any, record: Callable[[], None]) -> None:
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


def retry_calls(cls: type) -> type:
    """`cls` with every storage call (`_RETRIED`) retried while the database is away."""
    for name in _RETRIED:
        if hasattr(cls, name):
            setattr(cls, name, _retrying(name, getattr(cls, name)))
    return cls


@retry_calls
class ReconnectingRDBStorage(Reconnecting, RDBStorage):
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
        beat_once(self, lambda: RDBStorage.record_heartbeat(self, trial_id))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self._recently_unreachable():
            return []
        return super()._get_stale_trial_ids(study_id)
