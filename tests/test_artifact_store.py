"""Artifact stores: a prefix inside an S3 bucket is kept, not dropped."""

from __future__ import annotations

import io
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from hpo.storage.artifacts import PrefixedArtifactStore
from hpo.storage.engine import engine_kwargs


def test_prefixed_store_keeps_artifacts_under_its_prefix(tmp_path: Path) -> None:
    (tmp_path / "team" / "hpo").mkdir(parents=True)  # an S3 key needs no folders; files do
    store = PrefixedArtifactStore(FileSystemArtifactStore(str(tmp_path)), "team/hpo")
    store.write("abc", io.BytesIO(b"weights"))
    assert (tmp_path / "team" / "hpo" / "abc").read_bytes() == b"weights"
    with store.open_reader("abc") as f:
        assert f.read() == b"weights"
    store.remove("abc")
    assert not (tmp_path / "team" / "hpo" / "abc").exists()


def test_libpq_settings_go_to_psycopg_only() -> None:
    psycopg = engine_kwargs("postgresql+psycopg://u@h/db")["connect_args"]
    assert psycopg["connect_timeout"] == 10 and psycopg["application_name"].startswith("hpo-")
    assert engine_kwargs("postgresql+pg8000://u@h/db")["connect_args"] == {}
    named = engine_kwargs("postgresql+psycopg://u@h/db?connect_timeout=3")["connect_args"]
    assert "connect_timeout" not in named  # the URL's own value wins
