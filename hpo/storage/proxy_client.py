"""The gRPC storage proxy's client: what a worker opens for `--storage grpc://HOST:PORT`.

`GrpcHeartbeatStorage` is Optuna's GrpcStorageProxy with the heartbeats it lacks, and
its calls ride out a proxy restart as hpo.storage.reconnect's do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage

from hpo.errors import UserError
from hpo.storage.attrs import HEARTBEAT_ATTR
from hpo.storage.compat import BaseHeartbeat, trial_id
from hpo.storage.reconnect import Reconnecting, beat_once, mask, retry_calls

GRPC_PORT = 13000


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


def grpc_storage(url: str, beat: dict[str, Any]) -> BaseStorage:
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


@retry_calls
class GrpcHeartbeatStorage(Reconnecting, optuna.storages.GrpcStorageProxy, BaseHeartbeat):
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
        beat_once(self, lambda: set_attr(self, trial_id, HEARTBEAT_ATTR, time.time()))

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
