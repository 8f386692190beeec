"""`hpo dashboard`: optuna-dashboard over a study storage, with its artifacts and notes.

The stock dashboard has no authentication and deletes a study on one HTTP DELETE, so it
binds to loopback by default, warns when told otherwise, and `--read-only` puts a WSGI
middleware in front that lets only GET and HEAD through. Every API call the dashboard's
own pages make while browsing is a GET; every POST, PUT, PATCH and DELETE it has changes
the storage or the artifact store (or calls an LLM provider, which we never configure).

Per-trial charts are uploaded by the worker (`hpo.service.objective`); the note on the
best trial is hpo.outputs.notes'.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.outputs.notes import sync_best_notes
from hpo.storage.artifacts import artifact_store
from hpo.storage.engine import mask, open_storage
from hpo.storage.records.study import read_study_doc
from hpo.storage.urls import single_storage_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD")


# ---- the server ----------------------------------------------------------------------


class ReadOnly:
    """WSGI middleware: GET and HEAD reach the dashboard; any other method gets a 403."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method in SAFE_METHODS:
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "/")
        body = json.dumps(
            {
                "reason": f"read-only dashboard: {method} {path} refused (restart without "
                "--read-only to change studies)",
            }
        ).encode()
        start_response(
            "403 Forbidden",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]


def _refuse(start_response: Callable[..., Any], status: str, reason: str) -> list[bytes]:
    body = json.dumps({"reason": reason}).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def served_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers a browser sends to this server: `host:port` as bound, and by any
    loopback name when bound to loopback. Bound to a wildcard (0.0.0.0, ::), also the
    machine's own names and addresses."""
    names = {host}
    if host in LOOPBACK or host in WILDCARD:
        names |= set(LOOPBACK)
    if host in WILDCARD:
        names |= {socket.gethostname(), socket.getfqdn()}
        try:
            names |= {str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass
    hosts = set()
    for name in names - set(WILDCARD):
        shown = f"[{name}]" if ":" in name else name
        hosts.add(f"{shown}:{port}".lower())
        if port == 80:
            hosts.add(shown.lower())
    return frozenset(hosts)


class HostCheck:
    """WSGI middleware against DNS rebinding and cross-site requests.

    A page on evil.example can point its own name at 127.0.0.1 and then talk to a
    loopback-bound dashboard from the victim's browser: the request then carries
    `Host: evil.example:PORT`, never one of ours, and is refused (HTTP 421). A page on any
    other site can also send a POST or DELETE straight to 127.0.0.1:PORT: the browser then
    says where it comes from in `Origin`, and a write from a foreign origin is refused
    (HTTP 403). Both in read-only and read-write mode.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "").strip().lower()
        if host not in self.hosts:
            return _refuse(
                start_response,
                "421 Misdirected Request",
                f"Host {host or '(none)'!r} is not this dashboard's address; open it as "
                f"http://{min(self.hosts)}/dashboard/",
            )
        method = environ.get("REQUEST_METHOD", "GET").upper()
        origin = environ.get("HTTP_ORIGIN")
        if method not in SAFE_METHODS and origin is not None:
            if origin.strip().lower().rstrip("/") not in {f"http://{h}" for h in self.hosts}:
                return _refuse(
                    start_response,
                    "403 Forbidden",
                    f"{method} from origin {origin!r} refused: only pages of this dashboard "
                    "may change studies",
                )
        return self.app(environ, start_response)


class _AnyStore:
    """Several studies in one storage may name different artifact stores: read from the
    one that has the artifact, write new ones to the first."""

    def __init__(self, stores: Sequence[Any]) -> None:
        self.stores = list(stores)

    def open_reader(self, artifact_id: str) -> Any:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the studies' stores")

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                store.remove(artifact_id)
                return
            except ArtifactNotFound:
                continue


def _store_or_none(url: str, target: str | None) -> Any:
    try:
        return artifact_store(url, StorageSection(artifacts=target))
    except UserError:  # grpc:// has no default store: studies that name none have none
        return None


def storage_artifact_store(url: str, storage: Any) -> Any:
    """The artifact store(s) the studies in this storage were launched with."""
    targets: dict[str | None, Any] = {}
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        section = (read_study_doc(summary.user_attrs) or {}).get("storage", {})
        target = section.get("artifacts")
        if target not in targets:
            targets[target] = _store_or_none(url, target)
    if None not in targets:
        targets[None] = _store_or_none(url, None)
    targets = {k: v for k, v in targets.items() if v is not None}
    stores = [
        *(s for k, s in targets.items() if k is None),
        *(s for k, s in targets.items() if k is not None),
    ]
    if not stores:
        return None
    return stores[0] if len(stores) == 1 else _AnyStore(stores)


class _Server(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request: a slow plot must not stall the page."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass


def make_app(url: str, *, read_only: bool, host: str = "127.0.0.1", port: int = 8080) -> Any:
    """The dashboard's WSGI app over `url` as served at `host:port`, with the studies'
    artifact store attached: requests for another Host are refused (`HostCheck`), and
    with `read_only` every change. The storage must exist: a dashboard never creates one."""
    import optuna_dashboard

    storage = open_storage(url, heartbeat=False, create=False)
    app = optuna_dashboard.wsgi(storage, artifact_store=storage_artifact_store(url, storage))
    if read_only:
        app = ReadOnly(app)
    else:
        for name in optuna.study.get_all_study_names(storage):
            sync_best_notes(optuna.load_study(study_name=name, storage=storage))
    return HostCheck(app, served_hosts(host, port))


def serve(cli_url: str | None, *, host: str, port: int, read_only: bool) -> int:
    url = single_storage_url(cli_url)
    app = make_app(url, read_only=read_only, host=host, port=port)
    if host not in LOOPBACK:
        print(
            f"warning: binding to {host}: the dashboard has no authentication, and anyone "
            "who reaches this port can change or delete studies"
            + ("" if read_only else "; consider --read-only"),
            file=sys.stderr,
            flush=True,
        )
    try:
        server = make_server(
            host,
            port,
            app,
            server_class=_Server6 if ":" in host else _Server,
            handler_class=_QuietHandler,
        )
    except OSError as err:
        raise UserError(
            f"cannot listen on {host}:{port} ({err.strerror}); pick another --port or --host"
        ) from None
    if server.server_port != port:  # --port 0: the Host check learns the port it got
        app.hosts = served_hosts(host, server.server_port)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"optuna-dashboard on http://{shown}:{server.server_port}/dashboard/ over {mask(url)}"
        + (" (read-only)" if read_only else "")
        + "; Ctrl-C stops it",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
