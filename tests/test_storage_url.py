"""One resolver for every command: --storage, else the environment, else storage/*.db."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.storage.urls import (
    STORAGE_ENV,
    given_url,
    resolve_url,
    single_storage_url,
    storage_urls,
    study_url,
)


@pytest.fixture(autouse=True)
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    return tmp_path


def make_db(name: str) -> str:
    Path("storage").mkdir(exist_ok=True)
    url = f"sqlite:///storage/{name}.db"
    optuna.create_study(study_name=name, storage=url)
    return url


def test_launch_order(monkeypatch: pytest.MonkeyPatch) -> None:
    named = StorageSection(url="sqlite:///named.db")
    assert resolve_url(StorageSection(), "s") == "sqlite:///storage/s.db"
    assert resolve_url(named, "s") == "sqlite:///named.db"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    assert resolve_url(named, "s") == "sqlite:///env.db"
    monkeypatch.setenv("MY_DB", "sqlite:///mine.db")
    assert resolve_url(StorageSection(url_env="MY_DB"), "s") == "sqlite:///mine.db"
    assert resolve_url(named, "s", "sqlite:///cli.db") == "sqlite:///cli.db"
    with pytest.raises(UserError, match="storage.url_env: environment variable NOPE is not set"):
        resolve_url(StorageSection(url_env="NOPE"), "s")


def test_workers_must_be_told(monkeypatch: pytest.MonkeyPatch) -> None:
    make_db("s")  # a local file is never guessed
    with pytest.raises(UserError, match=f"hpo worker: give --storage URL or set {STORAGE_ENV}"):
        given_url(None, "hpo worker")
    assert given_url("sqlite:///cli.db", "hpo worker") == "sqlite:///cli.db"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    assert given_url(None, "hpo worker") == "sqlite:///env.db"


def test_readers_of_every_study_and_of_one_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="no storage given and no studies under storage/"):
        storage_urls(None)
    a = make_db("a")
    assert storage_urls(None) == [a] and single_storage_url(None) == a
    b = make_db("b")
    assert storage_urls(None) == [a, b]
    with pytest.raises(UserError, match="several storages under storage/"):
        single_storage_url(None)
    assert single_storage_url(b) == b
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///env.db")
    assert storage_urls(None) == ["sqlite:///env.db"]


def test_one_study(monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_db("present")
    assert study_url("present", None) == url
    with pytest.raises(UserError, match=r"no study named 'gone'.*present \(storage/present.db\)"):
        study_url("gone", None)
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg://u@db.invalid/hpo")
    assert study_url("gone", None) == "postgresql+psycopg://u@db.invalid/hpo"
