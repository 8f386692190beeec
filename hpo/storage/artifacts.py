"""Where a study's artifacts go: base models, trial weights, charts.

A folder beside a SQLite file by default, or what the study names: a shared folder, or an
S3-compatible bucket with a prefix (Optuna's Boto3 store, kept under the prefix here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.config import StorageSection
from hpo.errors import UserError
from hpo.paths import check_writable_dir
from hpo.storage.urls import DEFAULT_DIR


def artifact_target(url: str, section: StorageSection | None = None) -> str:
    """Where base models and plots go: a folder beside a SQLite file, or what the study
    names (a path, or s3://bucket/prefix through Optuna's Boto3 store). Through a gRPC
    proxy the study must name one: workers on other machines cannot share a default.
    A folder must be one we can write into (checked, not created)."""
    target = section.artifacts if section and section.artifacts else None
    if target is None:
        if url.startswith("sqlite:///"):
            db = Path(url.removeprefix("sqlite:///"))
            target = str(db.parent / "artifacts" / db.stem)
        elif url.startswith("grpc://"):
            raise UserError(
                "storage.artifacts: a study served through a gRPC storage proxy needs an "
                "artifact store every worker reaches; set storage.artifacts in the study file "
                "to a shared folder (e.g. /shared/hpo-artifacts) or an s3://bucket"
            )
        else:
            target = str(DEFAULT_DIR / "artifacts")
    if not target.startswith("s3://"):
        check_writable_dir(target, "storage.artifacts:")
    return target


def artifact_store(url: str, section: StorageSection | None = None) -> Any:
    """The study's artifact store (see `artifact_target`), its folder created if need be."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    target = artifact_target(url, section)
    if target.startswith("s3://"):
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        store = Boto3ArtifactStore(bucket)
        return PrefixedArtifactStore(store, prefix.strip("/")) if prefix.strip("/") else store
    Path(target).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(target)


class PrefixedArtifactStore:
    """An Optuna artifact store that keeps its artifacts under `prefix/` of another one
    (Optuna's Boto3 store writes to the bucket's root)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(f"{self.prefix}/{artifact_id}")

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(f"{self.prefix}/{artifact_id}", content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(f"{self.prefix}/{artifact_id}")
