"""`hpo dashboard`: optuna-dashboard over a study storage, with its artifacts and notes.

The stock dashboard has no authentication and deletes a study on one HTTP DELETE, so it
binds to loopback by default, warns when told otherwise, and `--read-only` puts a WSGI
middleware in front that lets only GET and HEAD through. Every API call the dashboard's
own pages make while browsing is a GET; every POST, PUT, PATCH and DELETE it has changes
the storage or the artifact store (or calls an LLM provider, which we never configure).

Per-trial charts are uploaded by the worker (`hpo.service.objective`). The note on the best
trial is written here, by `sync_best_notes`: the worker calls it as each trial ends, so
the note follows the study live, and `hpo dashboard` calls it once at start (unless
read-only) to repair the one case a worker cannot see: two trials finishing at once.
"""

from __future__ import annotations

import json
import math
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.service import compat
from hpo.service.attrs import (
    ABLATED_COMPONENTS_ATTR,
    ALPHA_ATTR,
    BEST_NOTES_ATTR,
    LAYER_ATTR,
    SEED_ATTR,
    SELECTION_ATTR,
    STUDY_FILE_ATTR,
    VAL_GROUPS_ATTR,
)
from hpo.service.storage import artifact_store, mask, open_storage
from hpo.service.storage_url import single_storage_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD")
BEST_HEADING = "### ★ Best trial"
FRONT_HEADING = "### ★ On the Pareto front"
SUPERSEDED_HEADING = "### Was best until trial"
LEFT_FRONT_HEADING = "### Left the Pareto front"


# ---- the best trial's note -----------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _gain(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "–"
    return f"{100 * (after - before):+.1f} pts"


def _summary(groups: Mapping[str, float | None]) -> tuple[float | None, float | None]:
    present = [v for v in groups.values() if v is not None]
    if not present:
        return None, None
    return min(present), sum(present) / len(present)


def _values_text(objectives: Sequence[str], values: Sequence[float]) -> str:
    return ", ".join(f"{name} = {v:.4g}" for name, v in zip(objectives, values, strict=False))


def best_note(
    attrs: Mapping[str, Any],
    values: Sequence[float],
    objectives: Sequence[str],
    task: Mapping[str, Any],
    *,
    pareto: bool = False,
) -> str:
    """Markdown: what the trial ablated and what it gained on validation."""
    heading = FRONT_HEADING if pareto else BEST_HEADING
    lines = [f"{heading} ({_values_text(objectives, values)})", ""]
    groups = attrs.get(VAL_GROUPS_ATTR)
    if groups and ALPHA_ATTR in attrs:
        comps = ", ".join(str(c) for c in attrs.get(ABLATED_COMPONENTS_ATTR, []))
        how = (
            "conditioned on the concept labels (SCAR)"
            if attrs.get(SELECTION_ATTR, attrs.get("ablate", "conditioned")) == "conditioned"
            else "attribution (the components whose contribution differs most by concept)"
        )
        lines += [  # short lines: the dashboard's note box does not wrap wide content
            f"- **Removed** Faithful-SAE component(s) **{comps}** "
            f"of the `{attrs.get(LAYER_ATTR, task.get('layer', '?'))}` weight",
            f"- picked by: {how}",
            f"- **α = {attrs[ALPHA_ATTR]:.2f}**, chosen on validation",
            "",
            "| validation | original | debiased | gain |",
            "|---|---:|---:|---:|",
        ]
        o_worst, o_mean = _summary(groups["original"])
        d_worst, d_mean = _summary(groups["debiased"])
        lines.append(
            f"| **worst group** | {_pct(o_worst)} | {_pct(d_worst)} | "
            f"**{_gain(o_worst, d_worst)}** |"
        )
        lines.append(f"| mean group | {_pct(o_mean)} | {_pct(d_mean)} | {_gain(o_mean, d_mean)} |")
        for g, before in groups["original"].items():
            after = groups["debiased"].get(g)
            lines.append(f"| {g} | {_pct(before)} | {_pct(after)} | {_gain(before, after)} |")
        refs = [m for m in groups if m not in ("original", "debiased")]
        if refs:
            worst = ", ".join(f"{m.replace('_', ' ')} {_pct(_summary(groups[m])[0])}" for m in refs)
            lines += ["", f"References, worst group on validation: {worst}."]
        lines.append("")
    else:
        shown = [k for k in ("mmcs", "ml2r") if k in attrs]
        if shown:
            lines += [" · ".join(f"{k.upper()} {attrs[k]:.4f}" for k in shown), ""]
    tail = [
        f"{label} {attrs[k]:.2e}"
        for k, label in (
            ("faithfulness_error", "faithfulness error"),
            ("reconstruction_error", "reconstruction error"),
        )
        if isinstance(attrs.get(k), (int, float))
    ]
    if SEED_ATTR in attrs:
        tail.append(f"seed {attrs[SEED_ATTR]}")
    if tail:
        lines += [" · ".join(tail) + ".", ""]
    if groups:
        lines.append("Test numbers: `hpo report`, `hpo export` (never shown to the sampler).")
    return "\n".join(lines)


def superseded_note(body: str, by: int | None) -> str:
    """The note of a trial that no longer leads (`by`: the trial that took over, None when
    it left a Pareto front): kept, with a heading that says so."""
    first, _, rest = body.partition("\n")
    was = first.split("(", 1)[1].rstrip(")") if "(" in first else ""
    heading = LEFT_FRONT_HEADING if by is None else f"{SUPERSEDED_HEADING} {by}"
    return f"{heading} ({was})\n{rest}"


def leaders(
    trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
) -> list[FrozenTrial]:
    """The best feasible complete trial (one objective) or the Pareto front (several)."""
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.values is not None
        and all(math.isfinite(v) for v in t.values)
        and all(c <= 0 for c in t.constraints.values())
    ]
    if not done:
        return []
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
    scores = {t.number: [s * v for s, v in zip(signs, t.values, strict=True)] for t in done}
    if len(directions) == 1:
        return [max(done, key=lambda t: (scores[t.number][0], -t.number))]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return [t for t in done if not any(dominates(scores[o.number], scores[t.number]) for o in done)]


def sync_best_notes(
    study: optuna.Study, pending: tuple[int, Sequence[float]] | None = None
) -> list[int]:
    """Note the leading trial(s); mark trials we noted earlier that no longer lead.

    `pending` is (trial_id, values) of a trial whose objective is about to return: the
    worker counts it as complete already. A note a person wrote or edited is never
    overwritten. Returns the numbers of the trials whose note changed.
    """
    storage, study_id = compat.storage_of(study), compat.study_id(study)
    trials = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if pending is not None:
        trial = storage.get_trial(pending[0])
        trial = FrozenTrial(
            number=trial.number,
            state=TrialState.COMPLETE,
            value=None,
            values=list(pending[1]),
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_start,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=trial.system_attrs,  # its constraints: only feasible trials lead
            intermediate_values=trial.intermediate_values,
            trial_id=compat.trial_id(trial),
        )
        trials = [t for t in trials if compat.trial_id(t) != pending[0]] + [trial]
    front = leaders(trials, study.directions)
    if not front:
        return []
    study_file = study.user_attrs.get(STUDY_FILE_ATTR, {})
    objectives = study_file.get("study", {}).get("objectives", ["value"])
    task = study_file.get("task", {})
    pareto = len(study.directions) > 1
    by_id = {compat.trial_id(t): t for t in trials}
    desired: dict[int, str] = {}
    for t in front:
        attrs = {**study_file.get("params", {}), **t.params, **t.user_attrs}
        desired[compat.trial_id(t)] = best_note(attrs, t.values, objectives, task, pareto=pareto)
    system_attrs = storage.get_study_system_attrs(study_id)
    ours: dict[str, str] = dict(system_attrs.get(BEST_NOTES_ATTR, {}))
    for key, body in ours.items():
        tid = int(key)
        if tid not in desired and tid in by_id and body.startswith((BEST_HEADING, FRONT_HEADING)):
            desired[tid] = superseded_note(body, None if pareto else front[0].number)
    changed = []
    for tid, body in desired.items():
        note = compat.get_note(system_attrs, tid)
        if note["body"] == body or (note["body"] and note["body"] != ours.get(str(tid))):
            continue  # up to date, or a person's own note
        compat.save_note(storage, study_id, tid, note["version"] + 1, body)
        ours[str(tid)] = body
        changed.append(by_id[tid].number)
    if changed:
        storage.set_study_system_attr(study_id, BEST_NOTES_ATTR, ours)
    return changed


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
        section = summary.user_attrs.get(STUDY_FILE_ATTR, {}).get("storage", {})
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
