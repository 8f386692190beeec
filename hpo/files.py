"""Files written whole or not at all: one helper for every file the package writes.

A crash, a full disk or Ctrl-C in the middle of a write must leave the old file (or
none), never half of one: a cache entry, a downloaded MNIST file, a report or an export
that is cut short would otherwise be read later as if it were whole. Everything is
written beside its target and renamed over it (a rename in one folder is atomic).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO


def current_umask() -> int:
    """The process umask: temp files are private (0600), a file for people is not."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable, where the platform supports it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh file name beside `path` (nothing is created there) for a writer that wants
    a path, such as Optuna's download_artifact: renamed over `path` when the block ends
    normally, removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, public: bool = False) -> None:
    """Write `data` to `path` whole or not at all. The file is private (0600) unless
    `public`, which gives it the mode a plain open() would (0666 minus the umask)."""
    with atomic_writer(path, public=public) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, public: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write `path` through, whole or not at all: a temp file beside it
    (private, 0600, unless `public`), synced and renamed over `path` when the block ends
    normally, removed when it raises. A writer streams into it: nothing is held whole in
    memory (a bundle of cached layer inputs can be gigabytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if public:
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_folder(out: Path, files: Mapping[str, bytes]) -> None:
    """Write every file into a temp folder beside `out`, then rename it into place: on
    any error nothing half-written is left, and a folder already at `out` stays whole
    until the new one replaces it. Files and folder get the modes of plain open/mkdir."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data, public=True)
        tmp.chmod(0o777 & ~current_umask())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sync_folder(out.parent)
