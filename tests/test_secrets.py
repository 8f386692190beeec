"""Secrets stay secret, and the dashboard answers only at its own address.

A storage password can sit in the URL's user info (with an unencoded `@`, as people type
it), in a URL query parameter, or in `storage.engine_kwargs`. None of them may reach an
error line, a log line, the stored study file, `hpo status`, a report, an export or a
dashboard response. And the dashboard, in both modes, refuses a request for another Host
(DNS rebinding) and a write from another Origin.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import wsgiref.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import toy_study

from hpo.cli import main
from hpo.outputs.dashboard import make_app
from hpo.service.studies import storable
from hpo.service.study_file import parse_study
from hpo.storage.engine import engine_kwargs
from hpo.storage.redact import mask_url, redact, secrets_of

PASSWORD = "pw@in-user-info-S1"  # an unencoded @: SQLAlchemy would split it
QUERY = "query-pw-S2"
ENGINE = "engine-pw-S3"
TOKEN = "engine-token-S4"
SECRETS = (PASSWORD, "in-user-info-S1", QUERY, ENGINE, TOKEN)
STUDY_URL = (
    f"postgresql+psycopg://hpo:{PASSWORD}@db.invalid:5432/hpo?password={QUERY}&sslmode=require"
)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


def run(argv: list[str]) -> tuple[int, str, str]:
    """`hpo ARGV` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# ---- masking ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, masked",
    [
        (
            STUDY_URL,
            "postgresql+psycopg://hpo:***@db.invalid:5432/hpo?password=***&sslmode=require",
        ),
        ("postgresql://u:p@ss/w@rd@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:pa?ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://h/db?user=a@b&api_token=t", "postgresql://h/db?user=a@b&api_token=***"),
        ("mysql://u:p%40ss@h/db?passwd=x", "mysql://u:***@h/db?passwd=***"),
        ("sqlite:///data/a@b.db", "sqlite:///data/a@b.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("hpo:pw@host/db", "hpo:***@host/db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_every_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_secrets_of_finds_the_url_query_and_engine_kwargs_secrets() -> None:
    found = secrets_of(STUDY_URL, {"connect_args": {"password": ENGINE}, "pool_size": 2})
    assert set(SECRETS) - {TOKEN} <= set(found)
    assert redact({"connect_args": {"password": ENGINE, "sslmode": "require"}}) == {
        "connect_args": {"password": "***", "sslmode": "require"}
    }


def test_the_stored_study_file_has_no_secret_and_workers_get_no_mask_as_password() -> None:
    study = parse_study(
        {
            "study": {"name": "s", "objectives": ["mmcs"]},
            "storage": {
                "url": STUDY_URL,
                "engine_kwargs": {"connect_args": {"password": ENGINE, "sslmode": "require"}},
            },
            "task": {"kind": "toy_superposition"},
        },
        "test",
    )
    stored = storable(study)
    assert not leaks(json.dumps(stored))
    assert stored["storage"]["engine_kwargs"]["connect_args"]["sslmode"] == "require"
    again = parse_study(stored, "stored")  # what a worker reads back
    assert "password" not in engine_kwargs(STUDY_URL, again.storage.engine_kwargs)["connect_args"]


@pytest.mark.parametrize(
    "url",
    [
        STUDY_URL.replace(":5432", ":port"),  # not a number
        STUDY_URL.replace(":5432", ":99999"),  # out of range
        STUDY_URL.replace("db.invalid:5432", "127.0.0.1:9"),  # the driver's own error
        STUDY_URL.replace("postgresql+psycopg", "nosuchdb"),
    ],
)
def test_error_lines_carry_no_secret(url: str) -> None:
    code, out, err = run(["status", "--storage", url])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not leaks(out + err), err


# ---- a study run end to end, with secrets in its study file ----------------------------------


@pytest.fixture(scope="module")
def secret_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A toy study whose study file names a password-laden PostgreSQL URL and engine
    kwargs with secrets (the run itself uses --storage on SQLite): launched, one trial
    run, then status, report and export, all in this process."""
    root = tmp_path_factory.mktemp("secrets")
    storage = {
        "url": STUDY_URL,
        "engine_kwargs": {"execution_options": {"password": ENGINE, "api_token": TOKEN}},
    }
    path = toy_study(root, "toy", storage=storage, study__n_trials=1)
    url = f"sqlite:///{root / 'toy.db'}"
    outputs = [
        run(["launch", str(path), "--workers", "0", "--storage", url]),
        run(["worker", "--study", "toy", "--storage", url, "--threads", "1"]),
        run(["status", "--storage", url]),
        run(["status", "--storage", url, "--json"]),
        run(["report", "toy", "--storage", url, "--out", str(root / "report.html")]),
        run(["export", "toy", "--storage", url, "--out", str(root / "export")]),
    ]
    return {"root": root, "url": url, "outputs": outputs}


def test_no_secret_in_any_output_stored_attribute_report_or_export(
    secret_study: dict[str, Any],
) -> None:
    root, url = secret_study["root"], secret_study["url"]
    for code, out, err in secret_study["outputs"]:
        assert code == 0, err
        assert not leaks(out + err), out + err
    study = optuna.load_study(study_name="toy", storage=url)
    stored = study.user_attrs["study_file"]["storage"]
    assert stored["url"] == mask_url(STUDY_URL)
    assert stored["engine_kwargs"]["execution_options"] == {"password": "***", "api_token": "***"}
    files = [root / "report.html", *sorted((root / "export").iterdir())]
    files += [p for p in root.iterdir() if p.name.startswith("toy.db")]  # with its WAL
    files += [p for p in (root / "artifacts").rglob("*") if p.is_file()]
    for path in files:
        assert not leaks(path.read_bytes()), path


def call(
    app: Callable[..., Iterable[bytes]],
    method: str,
    path: str,
    *,
    host: str = "127.0.0.1:8080",
    origin: str | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One request straight into a WSGI app: status code and body."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "HTTP_HOST": host,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    if origin is not None:
        environ["HTTP_ORIGIN"] = origin
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []
    chunks = app(environ, lambda s, headers, exc_info=None: status.append(s))
    data = b"".join(chunks)
    return int(status[0].split()[0]), data


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
def test_the_dashboard_serves_no_secret(secret_study: dict[str, Any], read_only: bool) -> None:
    app = make_app(secret_study["url"], read_only=read_only)
    code, body = call(app, "GET", "/api/studies")
    assert code == 200
    (summary,) = json.loads(body)["study_summaries"]
    sid = summary["study_id"]
    for path in ("/api/studies", f"/api/studies/{sid}", f"/csv/{sid}", "/api/meta"):
        code, body = call(app, "GET", path)
        assert code == 200 and not leaks(body), path


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
def test_the_dashboard_refuses_a_foreign_host_and_a_foreign_origin(
    secret_study: dict[str, Any], read_only: bool
) -> None:
    url = secret_study["url"]
    app = make_app(url, read_only=read_only, host="127.0.0.1", port=8080)
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST:8080"):
        assert call(app, "GET", "/api/studies", host=host)[0] == 200, host
    for host in ("evil.example:8080", "evil.example", "127.0.0.1:9999", "127.0.0.1", ""):
        code, body = call(app, "GET", "/api/studies", host=host)
        assert code == 421 and b"not this dashboard's address" in body, host
    # DNS rebinding: a page on evil.example resolved to 127.0.0.1 deletes the study.
    assert call(app, "DELETE", "/api/studies/1", host="evil.example:8080")[0] == 421
    # A cross-site write to the right address: the browser names the page's origin.
    new_study = b'{"study_name": "new", "directions": ["minimize"]}'
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        code, _ = call(app, "POST", "/api/studies", origin=origin, body=new_study)
        assert code == 403, origin
    assert optuna.study.get_all_study_names(url) == ["toy"]
    if not read_only:  # the dashboard's own page may still write
        code, _ = call(app, "POST", "/api/studies", origin="http://127.0.0.1:8080", body=new_study)
        assert code in (200, 201)
        assert sorted(optuna.study.get_all_study_names(url)) == ["new", "toy"]
        optuna.delete_study(study_name="new", storage=url)


def test_sqlite_databases_hpo_creates_are_in_wal_mode(secret_study: dict[str, Any]) -> None:
    db = Path(secret_study["url"].removeprefix("sqlite:///"))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
