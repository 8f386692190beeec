"""Colored MNIST: the splits a trial trains and scores on, from synthetic grey arrays.

`train` carries the colour-digit tie at rate `bias`; probe, val and test are balanced and
disjoint from it, so worst-group accuracy there measures how much a model leans on colour.
The last part builds the same splits from a folder of coloured PNGs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hpo.data.colored_mnist import (
    ORACLE_SPLIT,
    PALETTE,
    SPLITS,
    ImageSplit,
    build_splits,
    colorize,
    make_groups,
)
from hpo.errors import UserError
from hpo.tasks.colored_mnist import ColoredMnistTask


def grey_mnist(
    train_per_digit: int = 400, test_per_digit: int = 60, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random grey 'digits' with shuffled labels: (train images, labels, test images, labels)."""
    rng = np.random.default_rng(seed)

    def part(per_digit: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.repeat(np.arange(10), per_digit))
        return rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels

    return (*part(train_per_digit), *part(test_per_digit))


def small_task(**changes: object) -> ColoredMnistTask:
    fields = {
        "bias": 0.9,
        "train_per_digit": 300,
        "probe_per_digit": 41,
        "val_per_digit": 30,
        "test_per_digit": 51,
        **changes,
    }
    return ColoredMnistTask(**fields)


@pytest.fixture(scope="module")
def grey() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return grey_mnist()


@pytest.fixture(scope="module")
def splits(grey: tuple[np.ndarray, ...]) -> dict[str, ImageSplit]:
    return build_splits(small_task(), *grey)


def tied_color(task: ColoredMnistTask, digits: np.ndarray) -> np.ndarray:
    tied = np.zeros(10, dtype=np.int64)
    for color, ds in enumerate(task.color_digits):
        tied[list(ds)] = color
    return tied[digits]


def assert_balanced(split: ImageSplit, n_colors: int) -> None:
    """Every digit's images spread over the colours evenly, up to one image."""
    for d in range(10):
        counts = np.bincount(split.colors[split.digits == d], minlength=n_colors)
        assert counts.max() - counts.min() <= 1, (d, counts.tolist())


def test_splits_have_the_asked_sizes_shapes_and_types(splits: dict[str, ImageSplit]) -> None:
    assert set(splits) == {*SPLITS, ORACLE_SPLIT}
    sizes = {"train": 300, "probe": 41, "val": 30, "test": 51, ORACLE_SPLIT: 300}
    for name, split in splits.items():
        n = sizes[name] * 10
        assert split.images.shape == (n, 3, 28, 28) and split.images.dtype == np.uint8
        assert split.digits.shape == split.colors.shape == split.source_index.shape == (n,)
        assert np.bincount(split.digits, minlength=10).tolist() == [sizes[name]] * 10


def test_train_probe_and_val_are_disjoint_and_test_comes_from_the_test_set(
    grey: tuple[np.ndarray, ...], splits: dict[str, ImageSplit]
) -> None:
    train_images, train_labels, test_images, test_labels = grey
    train, probe, val = (set(splits[s].source_index.tolist()) for s in ("train", "probe", "val"))

    assert not train & probe and not train & val and not probe & val
    for name in ("train", "probe", "val"):
        s = splits[name]
        assert len(set(s.source_index.tolist())) == len(s.source_index)
        np.testing.assert_array_equal(s.digits, train_labels[s.source_index])
    test = splits["test"]
    np.testing.assert_array_equal(test.digits, test_labels[test.source_index])
    assert test.source_index.max() < len(test_images)


def test_train_carries_the_colour_bias(splits: dict[str, ImageSplit]) -> None:
    train = splits["train"]

    rate = np.mean(train.colors == tied_color(small_task(), train.digits))

    assert rate == pytest.approx(0.9, abs=0.03)


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_bias_extremes_are_exact(grey: tuple[np.ndarray, ...], bias: float) -> None:
    task = small_task(bias=bias, train_per_digit=50)

    train = build_splits(task, *grey)["train"]

    assert np.mean(train.colors == tied_color(task, train.digits)) == bias


def test_probe_val_test_and_the_oracle_set_are_balanced(splits: dict[str, ImageSplit]) -> None:
    for name in ("probe", "val", "test", ORACLE_SPLIT):
        assert_balanced(splits[name], 2)


def test_the_oracle_trains_on_the_train_images_recoloured(
    grey: tuple[np.ndarray, ...], splits: dict[str, ImageSplit]
) -> None:
    train, oracle = splits["train"], splits[ORACLE_SPLIT]

    np.testing.assert_array_equal(oracle.source_index, train.source_index)
    np.testing.assert_array_equal(oracle.digits, train.digits)
    same = oracle.colors == train.colors
    np.testing.assert_array_equal(oracle.images[same], train.images[same])


def test_splits_are_deterministic_by_seed(grey: tuple[np.ndarray, ...]) -> None:
    task = small_task(train_per_digit=40)
    a = build_splits(task, *grey)
    b = build_splits(task, *grey)
    c = build_splits(small_task(train_per_digit=40, seed=1), *grey)

    for name in a:
        np.testing.assert_array_equal(a[name].images, b[name].images)
        np.testing.assert_array_equal(a[name].colors, b[name].colors)
        np.testing.assert_array_equal(a[name].source_index, b[name].source_index)
    assert not np.array_equal(a["train"].source_index, c["train"].source_index)
    assert not np.array_equal(a["probe"].colors, c["probe"].colors)


def test_colorize_background_paints_the_ground_and_foreground_the_strokes() -> None:
    gray = np.zeros((2, 28, 28), dtype=np.uint8)
    gray[:, 10, 10] = 255  # one white stroke pixel on black
    palette = np.array([PALETTE["red"], PALETTE["orange"]], dtype=np.float32)
    colors = np.array([0, 1])

    back = colorize(gray, colors, "background", palette)
    fore = colorize(gray, colors, "foreground", palette)

    assert back.shape == fore.shape == (2, 3, 28, 28) and back.dtype == np.uint8
    assert back[0, :, 0, 0].tolist() == [255, 0, 0]  # red ground
    assert back[1, :, 0, 0].tolist() == [255, 128, 0]  # orange ground
    assert back[0, :, 10, 10].tolist() == [255, 255, 255]  # strokes stay white
    assert fore[0, :, 0, 0].tolist() == [0, 0, 0]  # black ground
    assert fore[1, :, 10, 10].tolist() == [255, 128, 0]  # orange strokes


def test_groups_pair_each_colour_with_each_digit_set() -> None:
    task = ColoredMnistTask(
        colors=("red", "green", "blue"), color_digits=((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
    )

    groups = make_groups(task)

    assert len(groups.names) == 9
    assert groups.names[:3] == ("red/0-2", "red/3-5", "red/6-9")
    assert groups.names[-1] == "blue/6-9"
    ids = groups.ids(np.array([0, 4, 9, 9]), np.array([0, 1, 2, 0]))
    assert ids.tolist() == [0, 4, 8, 2]
    assert [groups.names[i] for i in ids] == ["red/0-2", "green/3-5", "blue/6-9", "red/6-9"]


def test_three_colours_give_balanced_splits_and_a_spread_bias(
    grey: tuple[np.ndarray, ...],
) -> None:
    task = small_task(
        colors=("red", "green", "blue"),
        color_digits=((0, 1, 2), (3, 4, 5), (6, 7, 8, 9)),
        bias=0.7,
    )

    splits = build_splits(task, *grey)

    for name in ("probe", "val", "test", ORACLE_SPLIT):
        assert_balanced(splits[name], 3)
    train = splits["train"]
    tied = tied_color(task, train.digits)
    assert np.mean(train.colors == tied) == pytest.approx(0.7, abs=0.04)
    off = Counter(((train.colors - tied) % 3)[train.colors != tied].tolist())
    assert set(off) == {1, 2}  # both other colours are used, about equally
    assert off[1] / (off[1] + off[2]) == pytest.approx(0.5, abs=0.06)
    groups = make_groups(task)
    assert set(groups.ids(splits["test"].digits, splits["test"].colors).tolist()) == set(range(9))


def test_asking_for_more_images_than_exist_names_the_digit() -> None:
    train_images, train_labels, test_images, test_labels = grey_mnist(40, 10)
    keep = (train_labels != 7) | (np.cumsum(train_labels == 7) <= 5)  # only 5 sevens left
    task = small_task(train_per_digit=10, probe_per_digit=5, val_per_digit=5, test_per_digit=5)

    with pytest.raises(UserError, match=r"only 5 images of digit 7 but the splits ask for 20"):
        build_splits(task, train_images[keep], train_labels[keep], test_images, test_labels)
    too_many_tests = small_task(
        train_per_digit=10, probe_per_digit=5, val_per_digit=5, test_per_digit=11
    )
    with pytest.raises(UserError, match=r"MNIST test has only 10 images of digit 0"):
        build_splits(too_many_tests, *grey_mnist(40, 10))


# ----------------------------------------------------------------- colorized folder

FOLDER_COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def write_colorized_folder(
    root: Path, train_per_cell: int = 8, test_per_cell: int = 4, colors: tuple[str, ...] = ()
) -> Path:
    """<root>/{training,testing}/<digit>/<color>_<n>.png: solid colour, digit in a pixel."""
    image_module = pytest.importorskip(
        "PIL.Image", reason="Pillow is not installed (pip install pillow)"
    )
    colors = colors or tuple(FOLDER_COLORS)
    n = 0
    for split, per_cell in (("training", train_per_cell), ("testing", test_per_cell)):
        for digit in range(10):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for color in colors:
                for _ in range(per_cell):
                    pixels = np.empty((28, 28, 3), dtype=np.uint8)
                    pixels[:] = FOLDER_COLORS[color]
                    pixels[0, 0] = (digit * 20, n % 256, n // 256)  # which file this was
                    image_module.fromarray(pixels).save(folder / f"{color}_{n}.png")
                    n += 1
    return root


@pytest.fixture(scope="module")
def colorized_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colorized_folder(tmp_path_factory.mktemp("colorized"))


def folder_task(root: Path, **changes: object) -> ColoredMnistTask:
    fields = {
        "source": "colorized_folder",
        "colorized_root": str(root),
        "bias": 1.0,
        "train_per_digit": 4,
        "probe_per_digit": 3,
        "val_per_digit": 2,
        "test_per_digit": 6,
        **changes,
    }
    return ColoredMnistTask(**fields)


def test_folder_splits_match_build_splits_semantics(colorized_root: Path) -> None:
    from hpo.data.colorized_files import load_colorized_folder
    from hpo.data.colorized_folder import folder_splits

    task = folder_task(colorized_root)

    splits, sha = folder_splits(task)

    assert sha == load_colorized_folder(colorized_root).sha256
    assert set(splits) == {*SPLITS, ORACLE_SPLIT}
    sizes = {"train": 4, "probe": 3, "val": 2, "test": 6, ORACLE_SPLIT: 4}
    for name, split in splits.items():
        n = sizes[name] * 10
        assert split.images.shape == (n, 3, 28, 28) and split.images.dtype == np.uint8
        assert np.bincount(split.digits, minlength=10).tolist() == [sizes[name]] * 10
        # blue is in the folder but not in the task: never used
        assert set(split.colors.tolist()) == {0, 1}
        # each image is the file its digit and colour say it is
        for image, digit, color in zip(split.images, split.digits, split.colors, strict=True):
            assert image[:, 5, 5].tolist() == list(FOLDER_COLORS[task.colors[color]])
            assert image[0, 0, 0] == digit * 20
    train, probe, val = (set(splits[s].source_index.tolist()) for s in ("train", "probe", "val"))
    assert len(train) == 40 and len(probe) == 30 and len(val) == 20
    assert not train & probe and not train & val and not probe & val
    oracle = set(splits[ORACLE_SPLIT].source_index.tolist())
    assert not oracle & probe and not oracle & val
    # the oracle reuses the train images whose colour fits: 2 of each digit's 4 (bias 1.0)
    assert len(oracle & train) == 20
    np.testing.assert_array_equal(
        splits["train"].colors, tied_color(task, splits["train"].digits)
    )  # bias 1.0
    for name in ("probe", "val", "test", ORACLE_SPLIT):
        assert_balanced(splits[name], 2)


def test_folder_splits_are_biased_at_the_asked_rate_and_deterministic(
    colorized_root: Path,
) -> None:
    from hpo.data.colorized_folder import folder_splits

    task = folder_task(colorized_root, bias=0.0)

    a, _ = folder_splits(task)
    b, _ = folder_splits(task)
    c, _ = folder_splits(folder_task(colorized_root, bias=0.0, seed=5))

    assert not np.any(a["train"].colors == tied_color(task, a["train"].digits))
    for name in a:
        np.testing.assert_array_equal(a[name].images, b[name].images)
        np.testing.assert_array_equal(a[name].source_index, b[name].source_index)
    assert not np.array_equal(a["train"].source_index, c["train"].source_index)


def test_a_task_colour_missing_from_the_folder_is_named(colorized_root: Path) -> None:
    from hpo.data.colorized_folder import folder_splits

    with pytest.raises(UserError, match="'yellow'"):
        folder_splits(folder_task(colorized_root, colors=("red", "yellow")))


def test_a_folder_too_small_for_the_splits_names_digit_and_colour(colorized_root: Path) -> None:
    from hpo.data.colorized_folder import folder_splits

    with pytest.raises(UserError, match=r"digit 0 in red"):
        folder_splits(folder_task(colorized_root, train_per_digit=8, probe_per_digit=10))
    with pytest.raises(UserError, match=r"testing.*digit 0"):
        folder_splits(folder_task(colorized_root, test_per_digit=10))


def test_a_trial_runs_on_a_colorized_folder(
    colorized_root: Path,
    make_study: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hpo.cli import main
    from hpo.data.colorized_files import load_colorized_folder

    study = make_study(
        task={
            "source": "colorized_folder",
            "colorized_root": str(colorized_root),
            "train_per_digit": 4,
            "probe_per_digit": 3,
            "val_per_digit": 2,
            "test_per_digit": 4,
        }
    )

    assert main(["trial", str(study), "--json"]) == 0

    result = json.loads(capsys.readouterr().out)
    assert result["data_sha256"] == load_colorized_folder(colorized_root).sha256
    assert set(result["models"]["debiased"]["test"]["groups"]) == {
        "red/0-4",
        "red/5-9",
        "green/0-4",
        "green/5-9",
    }
