"""Every private Optuna and optuna-dashboard internal the service uses, behind one door.

Optuna's public API has no study id, trial id, stale-trial query or note versioning, and
optuna-dashboard's public `save_note` cannot tell our note from a person's. Rather than
reach into `_private` names all over the package, callers import these small functions;
`tests/test_compat.py` checks each one against the installed versions and fails, naming
them, when an upgrade removes or changes one. Fix it here, once.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

__all__ = [
    "CACHED_STORAGE_CALLS",
    "OPTIMIZE_LOGGER",
    "BaseHeartbeat",
    "get_note",
    "grpc_proxy_server",
    "heartbeat_enabled",
    "optimize_logger",
    "save_note",
    "stale_trial_ids",
    "storage_of",
    "study_id",
    "trial_id",
]

# optuna.study._optimize logs each failed trial (with its traceback) on its module logger;
# hpo.service.logs filters the failures that are expected.
OPTIMIZE_LOGGER = "optuna.study._optimize"

# Private RDBStorage methods that Optuna's _CachedStorage (what a Study wraps an
# RDBStorage in) calls directly instead of their public twins: a storage that retries its
# calls (hpo.storage.engine) must wrap these too, or a database restart reaches them.
CACHED_STORAGE_CALLS = (
    "_get_stale_trial_ids",
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
)

# BaseHeartbeat (optuna.storages._heartbeat) is the class Optuna's heartbeat machinery
# (fail_stale_trials, the heartbeat thread) checks with isinstance: a storage that keeps
# heartbeats itself (the gRPC client in hpo.storage.engine) must inherit from it and
# implement its `_get_stale_trial_ids(study_id)`. Re-exported here, not wrapped.


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage (`Study._storage`): notes and study system attrs are read and
    written on it, and `hpo status` asks it for stale trials."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (`Study._study_id`): storage methods take it."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (`_trial_id`, unique across studies, unlike `number`):
    storage methods and dashboard notes are keyed by it."""
    return trial._trial_id


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is stale
    (`BaseHeartbeat._get_stale_trial_ids`): `hpo status` counts live workers with it
    without failing anything, which `optuna.storages.fail_stale_trials` would."""
    return list(storage._get_stale_trial_ids(study_id))  # type: ignore[attr-defined]


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether the storage keeps heartbeats (`optuna.storages._heartbeat.
    is_heartbeat_enabled`): only then can it tell a stale trial from a live one."""
    return is_heartbeat_enabled(storage)


def optimize_logger() -> logging.Logger:
    """The logger on which `study.optimize` reports failed trials (module
    `optuna.study._optimize`); it does not propagate to the root logger."""
    return logging.getLogger(OPTIMIZE_LOGGER)


def get_note(system_attrs: dict[str, Any], trial_id: int | None) -> dict[str, Any]:
    """A dashboard note as {"version": int, "body": str} from the study's system attrs
    (`optuna_dashboard._note.get_note_from_system_attrs`; trial_id None: the study's
    note). The public `get_note` hides the version, which `save_note` needs."""
    from optuna_dashboard._note import get_note_from_system_attrs

    return dict(get_note_from_system_attrs(system_attrs, trial_id))


def save_note(
    storage: BaseStorage, study_id: int, trial_id: int | None, version: int, body: str
) -> None:
    """Write a dashboard note as `version` (`optuna_dashboard._note.
    save_note_with_version`): the dashboard shows the highest version, and one we write
    must not clobber a newer one a person saved meanwhile. The public `save_note` needs
    a live Trial, which a finished trial no longer has."""
    from optuna_dashboard._note import save_note_with_version

    save_note_with_version(storage, study_id, trial_id, version, body)


def grpc_proxy_server(storage: BaseStorage, host: str, port: int) -> Any:
    """An unstarted gRPC storage proxy server (`optuna.storages._grpc.server.
    make_server`): the public `run_grpc_proxy_server` blocks, and a test needs to start
    and stop one in-process. Needs grpcio."""
    from optuna.storages._grpc.server import make_server

    return make_server(storage, host, port)
