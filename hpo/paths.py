"""Can we write there? Asked before the work, so that a bad path is one line, not a
traceback after minutes of training.

Every folder hpo writes into (the SQLite file's folder, the artifact store, the cache,
a report or an export) is checked the same way: the nearest existing ancestor must be a
folder we may write into, and nothing on the way may be a file. Nothing is created.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hpo.errors import UserError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _why_not(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created if need be), or None."""
    found = _nearest_existing(folder.absolute())
    if not found.is_dir():
        return "is a file" if found == folder.absolute() else f"{found} is a file, not a folder"
    if not writable(found):
        return f"cannot write into {found} (permission denied or a read-only file system)"
    return None


def check_writable_dir(path: str | Path, what: str) -> Path:
    """`path` is a folder we can create or write into; else a UserError naming `what`."""
    path = Path(path)
    why = _why_not(path)
    if why:
        raise UserError(f"{what} {path}: {why}; choose a folder you can write to")
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """`path` names a file we can create or replace; else a UserError naming `what`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name, e.g. {path / 'out.html'}")
    why = _why_not(path.parent)
    if why == "is a file":
        why = f"{path.parent} is a file, not a folder"
    if why:
        raise UserError(f"{what} {path}: {why}; choose a path you can write to")
    if path.exists() and not writable(path):
        raise UserError(f"{what} {path}: exists and is not writable")
    return path


def writable(path: Path) -> bool:
    """Whether we may write `path`. Root may write anything, but a file or folder whose
    mode grants nobody write access was made read-only on purpose: respected here."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(path, os.W_OK) and not _read_only_fs(path)


def readable(path: Path) -> bool:
    """Whether we may read `path` (with the same respect for a mode that forbids it)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o444) and os.access(path, os.R_OK)


def _read_only_fs(folder: Path) -> bool:
    """os.access says yes to root on a read-only mount; statvfs does not."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError as err:
        return err.errno == errno.EROFS
