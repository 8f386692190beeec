"""Colored MNIST from a folder of already-coloured PNGs (the seed's colorized-MNIST clone).

Same splits, same semantics as `hpo.data.colored_mnist.build_splits`, so results on the seed's
own data compare with ours: `train` has each digit in its tied colour with probability
`bias`, `probe` and `val` are balanced and disjoint from it, `test` is balanced and comes
from the folder's `testing` half. The images already carry their colours, so instead of
painting a grey digit, each slot first draws the colour it wants and then takes an unused
image of that digit in that colour (`task.colorize` does not apply here). Colours the
folder has but the task does not list are never used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpo.data.colored_mnist import (
    ORACLE_SPLIT,
    ColoredMnistSpec,
    ImageSplit,
    balanced_colors,
    biased_colors,
)
from hpo.data.colorized_files import load_colorized_folder
from hpo.errors import UserError


def folder_splits(task: ColoredMnistSpec) -> tuple[dict[str, ImageSplit], str]:
    """The splits (train, probe, val, test, train_balanced) and the folder's sha256.

    Deterministic by `task.seed`. `train_balanced` (the oracle's training set) has the
    train split's size with balanced colours; it reuses the train images wherever their
    colour fits and fills the rest from images no other split uses, so it stays disjoint
    from probe and val.
    """
    if not task.colorized_root:
        raise UserError("task.colorized_root: required when source = 'colorized_folder'")
    root = Path(task.colorized_root).expanduser()
    folder = load_colorized_folder(root)
    to_task = _task_color_index(folder.color_names, task, root)
    train_colors = to_task[folder.train_colors]
    test_colors = to_task[folder.test_colors]

    rng = np.random.default_rng(task.seed)
    counts, oracle = _cell_targets(task, rng)
    reused = np.minimum(oracle, counts["train"])

    train, probe, val, extra = _draw(
        folder.train_digits,
        train_colors,
        [counts["train"], counts["probe"], counts["val"], oracle - reused],
        task.colors,
        rng,
        f"{root / 'training'}",
    )
    (test,) = _draw(
        folder.test_digits, test_colors, [counts["test"]], task.colors, rng, f"{root / 'testing'}"
    )

    train_arrays = (folder.train_images, folder.train_digits, train_colors)
    test_arrays = (folder.test_images, folder.test_digits, test_colors)
    splits = {
        "train": _split(train, *train_arrays),
        "probe": _split(probe, *train_arrays),
        "val": _split(val, *train_arrays),
        "test": _split(test, *test_arrays),
        ORACLE_SPLIT: _split(_oracle_cells(train, reused, extra), *train_arrays),
    }
    return splits, folder.sha256


def _cell_targets(
    task: ColoredMnistSpec, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """How many images of each (digit, colour) cell every split wants, and the oracle's
    training set: train biased towards each digit's tied colour, the rest balanced."""
    n_colors = len(task.colors)
    tied = np.zeros(10, dtype=np.int64)
    for i, digits in enumerate(task.color_digits):
        tied[list(digits)] = i
    train_slots = _slots(task.train_per_digit)
    counts = {
        "train": _cell_counts(
            train_slots, biased_colors(train_slots, tied, n_colors, task.bias, rng), n_colors
        ),
        "probe": _balanced_counts(task.probe_per_digit, n_colors, rng),
        "val": _balanced_counts(task.val_per_digit, n_colors, rng),
        "test": _balanced_counts(task.test_per_digit, n_colors, rng),
    }
    return counts, _balanced_counts(task.train_per_digit, n_colors, rng)


def _oracle_cells(
    train: list[np.ndarray], reused: np.ndarray, extra: list[np.ndarray]
) -> list[np.ndarray]:
    """Each cell of the oracle's set: the first train images it reuses, then its own."""
    return [
        np.concatenate([cell[:k], more])
        for cell, k, more in zip(train, reused.ravel(), extra, strict=True)
    ]


def _task_color_index(
    folder_colors: tuple[str, ...], task: ColoredMnistSpec, root: Path
) -> np.ndarray:
    """Folder colour index -> task colour index, or -1 for a colour the task ignores."""
    missing = [c for c in task.colors if c not in folder_colors]
    if missing:
        raise UserError(
            f"task.colors: {missing[0]!r} has no images in the colorized folder {root} "
            f"(it has: {', '.join(folder_colors)}); list only colours the folder has"
        )
    return np.array(
        [task.colors.index(c) if c in task.colors else -1 for c in folder_colors], dtype=np.int64
    )


def _slots(per_digit: int) -> np.ndarray:
    """The digit of every slot of a split, digit-major: per_digit zeros, then ones, ..."""
    return np.repeat(np.arange(10, dtype=np.int64), per_digit)


def _cell_counts(digits: np.ndarray, colors: np.ndarray, n_colors: int) -> np.ndarray:
    """int [10, C]: how many slots want digit d in colour c."""
    flat = np.bincount(digits * n_colors + colors, minlength=10 * n_colors)
    return flat.reshape(10, n_colors)


def _balanced_counts(per_digit: int, n_colors: int, rng: np.random.Generator) -> np.ndarray:
    slots = _slots(per_digit)
    return _cell_counts(slots, balanced_colors(slots, n_colors, rng), n_colors)


def _draw(
    digits: np.ndarray,
    colors: np.ndarray,
    counts: list[np.ndarray],
    color_names: tuple[str, ...],
    rng: np.random.Generator,
    where: str,
) -> list[list[np.ndarray]]:
    """Disjoint image indices: set j gets counts[j][d, c] images of digit d in colour c.

    Returned per set as one index array per (digit, colour) cell, digit-major, so that a
    caller can still tell which of a set's images have which colour.
    """
    n_colors = len(color_names)
    out: list[list[np.ndarray]] = [[] for _ in counts]
    for d in range(10):
        for c in range(n_colors):
            pool = rng.permutation(np.flatnonzero((digits == d) & (colors == c)))
            need = sum(int(k[d, c]) for k in counts)
            if need > len(pool):
                raise UserError(
                    f"task: {where} has only {len(pool)} images of digit {d} in "
                    f"{color_names[c]} but the splits ask for {need}; lower the "
                    "*_per_digit settings (or the bias, which asks for more tied colours)"
                )
            start = 0
            for j, k in enumerate(counts):
                out[j].append(pool[start : start + int(k[d, c])])
                start += int(k[d, c])
    return out


def _split(
    cells: list[np.ndarray], images: np.ndarray, digits: np.ndarray, colors: np.ndarray
) -> ImageSplit:
    """One split from its chosen indices; images go from [N,28,28,3] to [N,3,28,28]."""
    idx = np.sort(np.concatenate(cells)).astype(np.int64)
    return ImageSplit(
        images=np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2)),
        digits=digits[idx].astype(np.int64),
        colors=colors[idx].astype(np.int64),
        source_index=idx,
    )
