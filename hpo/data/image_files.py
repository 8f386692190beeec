"""Images named by a metadata table, read one at a time (Pillow): a torch Dataset whose
items are the batch contract's dicts (hpo.tasks.batches), so a benchmark of thousands
of 224 × 224 images streams through the model instead of being held as one tensor.

Each image is converted to RGB, resized so that its shorter side is `resize`, centre-
cropped to `size` × `size` and normalised by `mean` and `std` per channel: the usual
ImageNet evaluation transform, written out so that reading images needs only Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hpo.errors import UserError


def pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise UserError(
            "reading images needs Pillow: pip install -e '.[vision]' (or pip install pillow)"
        ) from None
    return Image


def image_paths(root: Path, files: Sequence[str], column: str) -> list[Path]:
    """Every file under `root`, checked to exist (a UserError naming the first missing)."""
    if not root.is_dir():
        why = "is a file" if root.exists() else "does not exist"
        raise UserError(f"task.root: {root} {why}; give the folder the images lie under")
    paths = [root / f for f in files]
    for name, path in zip(files, paths, strict=True):
        if not path.is_file():
            raise UserError(
                f"task.root: {path} does not exist (named by column {column!r} of the metadata "
                f"as {name!r}, relative to task.root)"
            )
    return paths


class ImageFiles(Dataset[dict[str, torch.Tensor]]):
    """The images at `paths` with their labels, as batch-contract items."""

    def __init__(
        self,
        paths: Sequence[Path],
        y: np.ndarray,
        groups: np.ndarray,
        concepts: np.ndarray,
        *,
        size: int,
        resize: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.paths = list(paths)
        self.y, self.groups, self.concepts = (torch.from_numpy(a) for a in (y, groups, concepts))
        self.size, self.resize = size, resize
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "inputs": self.image(i),
            "y": self.y[i],
            "groups": self.groups[i],
            "concepts": self.concepts[i],
        }

    def image(self, i: int) -> torch.Tensor:
        Image = pillow()
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                scale = self.resize / min(w, h)
                img = img.resize(
                    (max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                    Image.BILINEAR,
                )
                w, h = img.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
                pixels = np.asarray(img, dtype=np.float32) / 255.0
        except OSError as err:
            raise UserError(f"task.root: cannot read the image {path} ({err})") from None
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        return (x - self.mean) / self.std
