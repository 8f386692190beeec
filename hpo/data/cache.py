"""Content-addressed cache of trained base models: train once, reuse instantly.

Keys are hashes of everything that determines the result (data checksum, task config,
seed, model code version), so a changed input is a miss, never a stale hit. Writes are
atomic: a crash leaves the old file or none, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from hpo.files import atomic_writer


def cache_dir() -> Path:
    """HPO_CACHE_DIR, else the per-user cache directory."""
    env = os.environ.get("HPO_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "faithful-sae-hpo"


def writable_cache_dir() -> Path:
    """`cache_dir()`, checked before the work: an unwritable cache is one line now, not a
    traceback after the data download and the base model's training."""
    from hpo.paths import check_writable_dir

    return check_writable_dir(cache_dir(), "cache folder (HPO_CACHE_DIR)")


def bundle_file(kind: str, key: str) -> Path:
    """Where a task's base-model bundle with this content hash lives in the local cache."""
    return cache_dir() / "base_models" / f"{kind}-{key}.pt"


def content_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def save_tensors(path: Path, obj: dict[str, Any]) -> None:
    """torch.save streamed to a temp file beside `path`, then renamed over it: never a
    second copy of the tensors in memory."""
    with atomic_writer(path) as fh:
        torch.save(obj, fh)


def load_tensors(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    obj: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return obj
