"""`hpo storage-proxy`: Optuna's gRPC storage proxy in front of the study database.

With hundreds of workers, each holding its own database connections and reading every
trial of the study before each new one, the database is the bottleneck. The proxy holds
one small connection pool and one trial cache for all of them; workers reach it with
`--storage grpc://HOST:PORT` (see hpo.storage.proxy_client.GrpcHeartbeatStorage for
their heartbeats).

The proxy has no TLS and no login: anyone who reaches its port can read and change every
study behind it. Bind it to loopback or a private cluster network only.
"""

from __future__ import annotations

import signal
import socket
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.storage.engine import mask, open_storage

# Requests served at once; the database pool matches it, so this is also the most
# connections the proxy ever opens (Optuna's own default thread pool is 10).
THREADS = 10


def serve(url: str, *, host: str = "127.0.0.1", port: int = 13000) -> int:
    """Serve the storage at `url` over gRPC until interrupted (Ctrl-C or SIGTERM)."""
    if url.startswith("grpc://"):
        raise UserError(
            f"--storage {url}: give the database the proxy serves (sqlite:///... or "
            "postgresql+psycopg://...), not another proxy"
        )
    if not 1 <= port <= 65535:
        raise UserError(f"--port: must be 1-65535, got {port}")
    try:
        import grpc  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"hpo storage-proxy needs grpcio ({err}); pip install 'faithful-sae-hpo[grpc]'"
        ) from None
    _check_port_free(host, port)
    pool: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        pool = {"pool_size": THREADS, "max_overflow": 0}
    backend = open_storage(url, StorageSection(engine_kwargs=pool), heartbeat=False)
    # Optuna's advice: serve through its trial cache, not the bare RDBStorage.
    storage = optuna.storages.get_storage(backend)
    signal.signal(signal.SIGTERM, _stop)
    print(
        f"storage proxy for {mask(url)} on {host}:{port}; workers join with: "
        f"hpo worker --study NAME --storage grpc://{host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            optuna.storages.run_grpc_proxy_server(
                storage,
                host=host,
                port=port,
                thread_pool=ThreadPoolExecutor(max_workers=THREADS),
            )
        except RuntimeError as err:  # grpc could not bind the address
            raise UserError(
                f"--host/--port: cannot listen on {host}:{port} ({err}); is the port in use?"
            ) from None
        except _Stopped:
            print("storage proxy stopped", file=sys.stderr, flush=True)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """gRPC binds with SO_REUSEPORT: a second proxy on a busy port would start silently
    and share its clients with the first. A plain bind tells."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR: a restart must not wait out connections in TIME_WAIT; a
            # listening socket still refuses the bind.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as err:
        raise UserError(
            f"--host/--port: cannot listen on {host}:{port}: {err.strerror or err}"
        ) from None


class _Stopped(Exception):
    """SIGTERM (a service manager, Slurm at the end of a job): a normal stop."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped
