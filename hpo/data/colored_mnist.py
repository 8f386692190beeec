"""Colored MNIST from grey MNIST: colourisation, the four splits and the groups.

Pure numpy, deterministic by seed. `train` carries the spurious colour-digit tie (with
probability `bias` an image gets its digit's tied colour); `probe`, `val` and `test` are
balanced, so colour says nothing about the digit there and worst-group accuracy measures
how much the model leans on colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hpo.errors import UserError

# Colours a user can name in a study file, as RGB in [0, 1].
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
}


class ColoredMnistSpec(Protocol):
    """What building the splits reads of a task's settings (the colored-MNIST task's
    `[task]` section satisfies it): the data layer names no task."""

    @property
    def seed(self) -> int: ...
    @property
    def colors(self) -> tuple[str, ...]: ...
    @property
    def color_digits(self) -> tuple[tuple[int, ...], ...]: ...
    @property
    def colorize(self) -> str: ...
    @property
    def bias(self) -> float: ...
    @property
    def train_per_digit(self) -> int: ...
    @property
    def probe_per_digit(self) -> int: ...
    @property
    def val_per_digit(self) -> int: ...
    @property
    def test_per_digit(self) -> int: ...
    @property
    def colorized_root(self) -> str | None: ...


SPLITS = ("train", "probe", "val", "test")
# The oracle's training set: the `train` images, recoloured without the tie.
ORACLE_SPLIT = "train_balanced"


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # uint8 [N, 3, 28, 28]
    digits: np.ndarray  # int64 [N]
    colors: np.ndarray  # int64 [N], index into the task's colours
    source_index: np.ndarray  # int64 [N], row in the MNIST array it came from


@dataclass(frozen=True)
class Groups:
    """Groups are (colour, digit set) pairs; ids are colour * n_sets + set."""

    names: tuple[str, ...]
    digit_set: np.ndarray  # int64 [10]: digit -> index of its digit set

    def ids(self, digits: np.ndarray, colors: np.ndarray) -> np.ndarray:
        ids: np.ndarray = colors * self.n_sets + self.digit_set[digits]
        return ids

    @property
    def n_sets(self) -> int:
        return int(self.digit_set.max()) + 1


def make_groups(task: ColoredMnistSpec) -> Groups:
    digit_set = np.zeros(10, dtype=np.int64)
    for i, digits in enumerate(task.color_digits):
        digit_set[list(digits)] = i
    names = tuple(
        f"{color}/{_digits_label(digits)}" for color in task.colors for digits in task.color_digits
    )
    return Groups(names=names, digit_set=digit_set)


def _digits_label(digits: tuple[int, ...]) -> str:
    d = sorted(digits)
    if d == list(range(d[0], d[-1] + 1)) and len(d) > 2:
        return f"{d[0]}-{d[-1]}"
    return ",".join(str(x) for x in d)


def colorize(gray: np.ndarray, colors: np.ndarray, mode: str, palette: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] grey digits → uint8 [N,3,28,28]; `colors` indexes `palette` [C,3]."""
    g = gray.astype(np.float32)[:, None] / 255.0  # [N,1,28,28]
    rgb = palette[colors].astype(np.float32)[:, :, None, None]  # [N,3,1,1]
    if mode == "background":
        out = g + (1.0 - g) * rgb  # white strokes on a coloured ground
    else:
        out = g * rgb  # coloured strokes on black
    rgb_uint8: np.ndarray = np.rint(out * 255.0).astype(np.uint8)
    return rgb_uint8


def biased_colors(
    digits: np.ndarray, tied: np.ndarray, n_colors: int, bias: float, rng: np.random.Generator
) -> np.ndarray:
    """Tied colour with probability `bias`, else one of the other colours uniformly."""
    keep = rng.random(len(digits)) < bias
    other = (tied[digits] + rng.integers(1, n_colors, size=len(digits))) % n_colors
    colors: np.ndarray = np.where(keep, tied[digits], other).astype(np.int64)
    return colors


def balanced_colors(digits: np.ndarray, n_colors: int, rng: np.random.Generator) -> np.ndarray:
    """Each digit's images split evenly across colours (exactly, up to one image)."""
    colors = np.empty(len(digits), dtype=np.int64)
    for d in np.unique(digits):
        idx = np.flatnonzero(digits == d)
        colors[idx] = rng.permutation(np.arange(len(idx)) % n_colors)
    return colors


def per_digit_indices(
    labels: np.ndarray, counts: list[int], rng: np.random.Generator, source: str
) -> list[np.ndarray]:
    """Disjoint index sets, `counts[j]` images of every digit in set j."""
    chosen: list[list[np.ndarray]] = [[] for _ in counts]
    for d in range(10):
        pool = rng.permutation(np.flatnonzero(labels == d))
        need = sum(counts)
        if need > len(pool):
            raise UserError(
                f"task: {source} has only {len(pool)} images of digit {d} but the splits "
                f"ask for {need}; lower the *_per_digit settings"
            )
        start = 0
        for j, n in enumerate(counts):
            chosen[j].append(pool[start : start + n])
            start += n
    return [np.sort(np.concatenate(c)) for c in chosen]


def build_splits(
    task: ColoredMnistSpec,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> dict[str, ImageSplit]:
    """The four disjoint splits from grey MNIST arrays (uint8 [N,28,28], int labels).

    Also `train_balanced`: the train images with balanced colours, for the oracle.
    """
    rng = np.random.default_rng(task.seed)
    palette = np.array([PALETTE[c] for c in task.colors], dtype=np.float32)
    tied = np.zeros(10, dtype=np.int64)
    for i, color_digits in enumerate(task.color_digits):
        tied[list(color_digits)] = i
    n_colors = len(task.colors)
    counts = [task.train_per_digit, task.probe_per_digit, task.val_per_digit]
    train_idx, probe_idx, val_idx = per_digit_indices(train_labels, counts, rng, "MNIST train")
    (test_idx,) = per_digit_indices(test_labels, [task.test_per_digit], rng, "MNIST test")
    splits: dict[str, ImageSplit] = {}
    for name, idx, images, labels in (
        ("train", train_idx, train_images, train_labels),
        ("probe", probe_idx, train_images, train_labels),
        ("val", val_idx, train_images, train_labels),
        ("test", test_idx, test_images, test_labels),
    ):
        digits = labels[idx].astype(np.int64)
        if name == "train":
            colors = biased_colors(digits, tied, n_colors, task.bias, rng)
        else:
            colors = balanced_colors(digits, n_colors, rng)
        splits[name] = ImageSplit(
            images=colorize(images[idx], colors, task.colorize, palette),
            digits=digits,
            colors=colors,
            source_index=idx.astype(np.int64),
        )
    digits = splits["train"].digits
    colors = balanced_colors(digits, n_colors, rng)
    splits[ORACLE_SPLIT] = ImageSplit(
        images=colorize(train_images[train_idx], colors, task.colorize, palette),
        digits=digits,
        colors=colors,
        source_index=train_idx.astype(np.int64),
    )
    return splits
