"""`[task] kind = "text_csv"`: a CSV of texts with label, spurious attribute and split
(MultiNLI, CivilComments, or any such table), and a Hugging Face sequence classifier
from a local folder.

`model` is the folder `save_pretrained` wrote for the trained classifier and its
tokenizer. Texts are tokenised a batch at a time, padded to `max_length`, and stream
through the model (hpo.data.text_rows); only the decomposed layer's inputs are cached.
By default that layer is the classifier's last linear layer (BERT's `classifier`), and
trials score from its inputs; a layer inside the encoder sees every token, and then
`tokens_per_sample` of each text's real tokens are its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from hpo.data.text_rows import TextRows, Tokenize
from hpo.errors import UserError
from hpo.models.hf_text import rebuild_classifier, text_classifier
from hpo.strict import Strict
from hpo.tasks.base import TaskConfig
from hpo.tasks.metadata_table import MetadataTaskConfig, Rows, file_digest, table_rows
from hpo.tasks.metadata_task import LoadedModel, MetadataTask
from hpo.tasks.user import SPLITS


class TextColumns(Strict):
    """The CSV's columns; `text_pair` for a sentence pair (MultiNLI's hypothesis)."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    attribute: str = "attribute"
    split: str = "split"


class TextCsvTask(MetadataTaskConfig):
    """A CSV of texts and a Hugging Face sequence classifier in a local folder."""

    path_fields: ClassVar[tuple[str, ...]] = ("metadata", "model")

    kind: Literal["text_csv"] = "text_csv"
    columns: TextColumns = TextColumns()
    model: str = Field(min_length=1)
    max_length: int = Field(128, ge=2)
    # Where the decomposed layer sees every token (inside the encoder): how many of each
    # text's real tokens are its rows (hpo.tasks.streaming); the classifier layer sees one
    # vector per text, and then this does not apply.
    tokens_per_sample: int = Field(16, ge=1)


class TextCsv(MetadataTask):
    kind: ClassVar[str] = "text_csv"
    config: ClassVar[type[TaskConfig]] = TextCsvTask

    def rows(self, cfg: TextCsvTask) -> Rows:
        c = cfg.columns
        return table_rows(cfg, c.label, c.attribute, c.split)

    def datasets(self, cfg: TextCsvTask, rows: Rows) -> tuple[dict[str, Any], str]:
        c = cfg.columns
        texts = rows.table.column(c.text, "task.columns.text")
        pairs = (
            None
            if c.text_pair is None
            else rows.table.column(c.text_pair, "task.columns.text_pair")
        )
        out = {}
        for name in SPLITS:
            kept = rows.kept[name]
            out[name] = TextRows(
                [texts[i] for i in kept],
                None if pairs is None else [pairs[i] for i in kept],
                rows.y[kept],
                rows.groups[kept],
                rows.concepts[kept],
            )
        return out, "texts in the table"  # whose bytes key the bundle

    def model(self, cfg: TextCsvTask, n_classes: int) -> LoadedModel:
        folder = Path(cfg.model).expanduser()
        model, tokenizer, config = text_classifier(folder)
        if config.get("num_labels", n_classes) != n_classes:
            raise UserError(
                f"task.model: the classifier in {folder} has {config['num_labels']} labels but "
                f"task.columns.label has {n_classes} values"
            )
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return LoadedModel(model, file_digest(files), config, Tokenize(tokenizer, cfg.max_length))

    def rebuild(self, cfg: TextCsvTask, meta: dict[str, Any]) -> Any:
        return rebuild_classifier(meta)

    def card(self, cfg: TextCsvTask, meta: dict[str, Any]) -> dict[str, str]:
        return {
            "summary": (
                f"A Hugging Face `{meta['rebuild'].get('model_type', 'model')}` sequence "
                f"classifier ({', '.join(meta['label_names'])}) from `{cfg.model}`"
            ),
            "class": "transformers.AutoModelForSequenceClassification",
            "load": (
                "from transformers import AutoModelForSequenceClassification\n"
                f"model = AutoModelForSequenceClassification.from_pretrained({cfg.model!r})"
            ),
        }
