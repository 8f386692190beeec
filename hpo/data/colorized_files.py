"""The seed project's colorized-MNIST clone (a folder of coloured PNGs), read into arrays.

Kept so that results can be compared with the seed's own data
(hpo.data.colorized_folder builds the task's splits from it).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data.mnist_files import IMAGE_SIDE, DataError

__all__ = ["ColorizedFolder", "load_colorized_folder"]


@dataclass(frozen=True)
class ColorizedFolder:
    """The seed project's colorized-MNIST clone, read into arrays.

    Kept so that results can be compared with the seed's own data; colours are
    stored as indices into ``color_names`` so that group statistics are array ops.
    """

    train_images: np.ndarray  # uint8 [N, 28, 28, 3] RGB
    train_digits: np.ndarray  # int64 [N]
    train_colors: np.ndarray  # int64 [N], index into color_names
    test_images: np.ndarray  # uint8 [M, 28, 28, 3] RGB
    test_digits: np.ndarray  # int64 [M]
    test_colors: np.ndarray  # int64 [M], index into color_names
    color_names: tuple[str, ...]  # sorted
    sha256: str  # over all PNG files' bytes, in sorted relative-path order
    source: str


# ----------------------------------------------------------------- colorized folder

_COLOR_FILE = re.compile(r"^(?P<color>[A-Za-z]+)_.*\.png$", re.IGNORECASE)


def load_colorized_folder(root: str | Path) -> ColorizedFolder:
    """Read the seed's colorized-MNIST clone (``<root>/{training,testing}/<digit>/<color>_*.png``).

    Lets the seed's original colour-debiasing data be compared with ours; Pillow
    is only needed for this layout, so it is imported here, not at module load.
    """
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"{root}: reading the colorized-MNIST PNG folder needs Pillow; "
            "run `pip install 'faithful-sae-hpo[colorized]'` (or pip install pillow) and try again."
        ) from None
    root = Path(root).expanduser()
    splits = {split: _list_pngs(root, split) for split in ("training", "testing")}
    color_names = tuple(sorted({color for files in splits.values() for _, color, _ in files}))
    color_index = {name: i for i, name in enumerate(color_names)}

    digest = hashlib.sha256()
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split, files in splits.items():
        images = np.empty((len(files), IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        for i, (path, _, _) in enumerate(files):
            data = path.read_bytes()
            digest.update(data)
            images[i] = _decode_png(Image, path, data)
        digits = np.array([digit for _, _, digit in files], dtype=np.int64)
        colors = np.array([color_index[color] for _, color, _ in files], dtype=np.int64)
        arrays[split] = (images, digits, colors)
    return ColorizedFolder(
        train_images=arrays["training"][0],
        train_digits=arrays["training"][1],
        train_colors=arrays["training"][2],
        test_images=arrays["testing"][0],
        test_digits=arrays["testing"][1],
        test_colors=arrays["testing"][2],
        color_names=color_names,
        sha256=digest.hexdigest(),
        source=str(root),
    )


def _list_pngs(root: Path, split: str) -> list[tuple[Path, str, int]]:
    """(path, colour, digit) for every PNG of one split, in sorted path order.

    Training is listed before testing, and each split in sorted order, so the
    checksum over file bytes does not depend on the file system's listing order.
    """
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: missing. A colorized-MNIST folder needs 'training' and 'testing' "
            "subfolders, each with one folder per digit 0-9 holding <color>_<n>.png files."
        )
    files: list[tuple[Path, str, int]] = []
    for digit_dir in _sorted_dirs(folder.iterdir()):
        if not digit_dir.name.isdigit() or not 0 <= int(digit_dir.name) <= 9:
            raise DataError(f"{digit_dir}: expected a folder named after a digit 0-9.")
        for path in sorted(digit_dir.glob("*.png")):
            match = _COLOR_FILE.match(path.name)
            if match is None:
                raise DataError(f"{path}: expected a file name like red_123.png (<color>_<n>.png).")
            files.append((path, match["color"].lower(), int(digit_dir.name)))
    if not files:
        raise DataError(f"{folder}: no <digit>/<color>_*.png files found.")
    return files


def _sorted_dirs(entries: Iterable[Path]) -> list[Path]:
    return sorted(entry for entry in entries if entry.is_dir())


def _decode_png(image_module: Any, path: Path, data: bytes) -> np.ndarray:
    """One PNG as uint8 [28, 28, 3] RGB, resized if it is another size."""
    try:
        with image_module.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PNG image ({exc}).") from None
    if rgb.size != (IMAGE_SIDE, IMAGE_SIDE):
        rgb = rgb.resize((IMAGE_SIDE, IMAGE_SIDE), image_module.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
