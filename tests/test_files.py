"""Files are written whole or not at all, and leave no temp file behind either way."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hpo.files import atomic_folder, atomic_path, atomic_write_bytes, current_umask


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_bytes_is_private_unless_public(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "cache.pt", b"x")
    atomic_write_bytes(tmp_path / "report.html", b"y", public=True)
    assert (tmp_path / "a" / "cache.pt").read_bytes() == b"x"
    assert mode(tmp_path / "a" / "cache.pt") == 0o600
    assert mode(tmp_path / "report.html") == 0o666 & ~current_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "report.html"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with atomic_path(target) as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("download failed")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_folder_replaces_a_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "models" / "study"
    atomic_folder(out, {"a.txt": b"1", "b.txt": b"2"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.txt": b"1", "b.txt": b"2"}
    assert mode(out) == 0o777 & ~current_umask()
    assert mode(out / "a.txt") == 0o666 & ~current_umask()
    atomic_folder(out, {"c.txt": b"3"})
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    with pytest.raises(TypeError):
        atomic_folder(out, {"d.txt": b"4", "e.txt": None})  # type: ignore[dict-item]
    assert [p.name for p in out.iterdir()] == ["c.txt"]  # the earlier one stays whole
    assert [p.name for p in out.parent.iterdir()] == ["study"]
