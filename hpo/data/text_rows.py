"""Texts named by a metadata table, tokenised batch by batch: a Dataset of rows and a
collate function that turns a batch of them into the batch contract's dict
(hpo.tasks.batches), with the tokenizer's `input_ids`, `attention_mask` (and
`token_type_ids` where it makes them) as the model's keyword inputs.

Every batch is padded to `max_length` tokens, so that cached inputs share one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class TextRows(Dataset[tuple[str, str | None, int, int, int]]):
    """(text, text pair or None, y, group, concept) per kept row."""

    def __init__(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None,
        y: np.ndarray,
        groups: np.ndarray,
        concepts: np.ndarray,
    ) -> None:
        self.texts, self.pairs = list(texts), None if pairs is None else list(pairs)
        self.y, self.groups, self.concepts = y, groups, concepts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, str | None, int, int, int]:
        pair = None if self.pairs is None else self.pairs[i]
        return self.texts[i], pair, int(self.y[i]), int(self.groups[i]), int(self.concepts[i])


class Tokenize:
    """A DataLoader's collate function: rows -> {inputs, y, groups, concepts}."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows: list[tuple[str, str | None, int, int, int]]) -> dict[str, Any]:
        texts, pairs, y, groups, concepts = zip(*rows, strict=True)
        encoded = self.tokenizer(
            list(texts),
            None if pairs[0] is None else list(pairs),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "inputs": dict(encoded),
            "y": torch.tensor(y),
            "groups": torch.tensor(groups),
            "concepts": torch.tensor(concepts),
        }
