"""`[task] kind = "image_folder"`: a folder of images with a metadata CSV (the layout
Waterbirds and CelebA ship in) and a torchvision classifier trained on it.

The CSV names each image's file (relative to `root`), label, spurious attribute and
split; `weights` is the user's trained model, a state dict of
`torchvision.models.<arch>(num_classes=...)`. The images stream through the model in
batches (hpo.data.image_files): only the decomposed layer's inputs are cached, at most
`max_rows` per split. The decomposed layer is by default the classifier's last linear
layer (ResNet's `fc`), from whose inputs every trial scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from hpo.data.image_files import ImageFiles, image_paths
from hpo.models.torchvision_models import architecture, trained_classifier
from hpo.strict import Strict
from hpo.tasks.base import TaskConfig
from hpo.tasks.metadata_table import MetadataTaskConfig, Rows, file_digest, table_rows
from hpo.tasks.metadata_task import LoadedModel, MetadataTask
from hpo.tasks.user import SPLITS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageColumns(Strict):
    """The metadata columns: Waterbirds' names by default."""

    file: str = "img_filename"
    label: str = "y"
    attribute: str = "place"
    split: str = "split"


class ImageFolderTask(MetadataTaskConfig):
    """Images under `root`, a metadata CSV, a torchvision classifier's weights."""

    path_fields: ClassVar[tuple[str, ...]] = ("metadata", "root", "weights")

    kind: Literal["image_folder"] = "image_folder"
    root: str = Field(min_length=1)
    columns: ImageColumns = ImageColumns()
    arch: str = "resnet50"
    weights: str = Field(min_length=1)
    image_size: int = Field(224, ge=8)
    resize: int = Field(256, ge=8)  # the shorter side, before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class ImageFolder(MetadataTask):
    kind: ClassVar[str] = "image_folder"
    config: ClassVar[type[TaskConfig]] = ImageFolderTask

    def rows(self, cfg: ImageFolderTask) -> Rows:
        c = cfg.columns
        return table_rows(cfg, c.label, c.attribute, c.split)

    def datasets(self, cfg: ImageFolderTask, rows: Rows) -> tuple[dict[str, Any], str]:
        files = rows.table.column(cfg.columns.file, "task.columns.file")
        root = Path(cfg.root).expanduser()
        out, every = {}, []
        for name in SPLITS:
            kept = rows.kept[name]
            paths = image_paths(root, [files[i] for i in kept], cfg.columns.file)
            every += paths
            out[name] = ImageFiles(
                paths,
                rows.y[kept],
                rows.groups[kept],
                rows.concepts[kept],
                size=cfg.image_size,
                resize=max(cfg.resize, cfg.image_size),
                mean=cfg.mean,
                std=cfg.std,
            )
        return out, file_digest(every)

    def model(self, cfg: ImageFolderTask, n_classes: int) -> LoadedModel:
        weights = Path(cfg.weights).expanduser()
        model = trained_classifier(cfg.arch, n_classes, weights)
        return LoadedModel(
            model, file_digest([weights]), {"arch": cfg.arch, "n_classes": n_classes}
        )

    def rebuild(self, cfg: ImageFolderTask, meta: dict[str, Any]) -> Any:
        return architecture(meta["arch"], meta["n_classes"])

    def card(self, cfg: ImageFolderTask, meta: dict[str, Any]) -> dict[str, str]:
        arch, n = meta["rebuild"]["arch"], meta["rebuild"]["n_classes"]
        return {
            "summary": (
                f"A torchvision `{arch}` ({n} classes: {', '.join(meta['label_names'])}) "
                f"loaded from `{cfg.weights}`, on the images under `{cfg.root}`"
            ),
            "class": f"torchvision.models.{arch}",
            "load": f"import torchvision\nmodel = torchvision.models.{arch}(num_classes={n})",
        }
