"""What a batch of a streamed split must hold, and the batches of any split.

A `UserTask` split may be a `Split` of tensors, a `torch.utils.data.Dataset` or a
`DataLoader`. A dataset's item, and a loader's batch, is a dict:

    inputs    the model's inputs: a tensor (passed as `model(inputs)`) or a dict of
              tensors (passed as keyword arguments, e.g. input_ids and attention_mask);
              first dimension = sample in a batch
    y         integer class labels, shape [B]
    groups    integer group ids, shape [B]
    concepts  integer labels of the spurious attribute, shape [B]; required on probe

A dataset's items are batched by torch's default collate (`UserTask.batch_size` at a
time); a loader's batches are taken as its collate function makes them. `check_batch`
turns every way a batch can be wrong into one sentence naming the split, the batch and
the key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hpo.errors import UserError
from hpo.models.model_inputs import ModelInputs

BATCH_KEYS = ("inputs", "y", "groups", "concepts")
# A split that streams: its items (a dataset's, through its loader's collate function)
# are whatever the user's data holds; each batch is checked against the contract.
Stream = Dataset[Any] | DataLoader[Any]
CONTRACT = "a batch is a dict with inputs, y, groups and (on probe) concepts"


@dataclass(frozen=True)
class Batch:
    inputs: ModelInputs
    y: torch.Tensor
    groups: torch.Tensor
    concepts: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.y)


def is_stream(data: Any) -> bool:
    """Whether a split is given as a Dataset or DataLoader (not as tensors)."""
    return isinstance(data, DataLoader | Dataset)


def loader_of(data: Stream, batch_size: int, where: str) -> DataLoader[Any]:
    """The split's batches in a fixed order: a dataset batched in order, a loader as it
    is (one that shuffles is refused: its order, and so the rows kept, would change)."""
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise UserError(
                f"{where} is a DataLoader that shuffles (shuffle=True): every pass would see "
                "another order; pass shuffle=False (the rows kept are drawn by seed)"
            )
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def stream_batches(
    data: Stream,
    where: str,
    *,
    batch_size: int,
    n_groups: int,
    n_concepts: int,
    needs_concepts: bool,
) -> Iterator[Batch]:
    """Every batch of a streamed split, checked; a UserError for the first bad one."""
    empty = True
    try:
        for i, raw in enumerate(loader_of(data, batch_size, where)):
            empty = False
            yield check_batch(raw, f"{where}: batch {i}", n_groups, n_concepts, needs_concepts)
    except UserError:
        raise
    except Exception as err:  # the user's dataset or collate function raised
        text = str(err).strip().splitlines()
        raise UserError(
            f"{where}: reading a batch failed: {type(err).__name__}: {text[0] if text else ''}"
        ) from None
    if empty:
        raise UserError(f"{where} is empty (its loader gave no batch)")


def check_batch(
    raw: Any, where: str, n_groups: int, n_concepts: int, needs_concepts: bool
) -> Batch:
    """`raw` as a Batch, or a UserError naming what is wrong with it."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{where} is a {type(raw).__name__}; {CONTRACT}")
    unknown = [k for k in raw if k not in BATCH_KEYS]
    if unknown:
        raise UserError(f"{where} has unknown key {unknown[0]!r}; {CONTRACT}")
    for key in ("inputs", "y", "groups"):
        if key not in raw:
            raise UserError(f"{where} has no {key!r}; {CONTRACT}")
    if needs_concepts and raw.get("concepts") is None:
        raise UserError(
            f"{where} has no 'concepts'; the probe split needs the spurious attribute's labels"
        )
    inputs = _inputs(raw["inputs"], f"{where}: inputs")
    n = len(inputs) if isinstance(inputs, torch.Tensor) else len(next(iter(inputs.values())))
    labels = {
        key: _labels(raw[key], n, f"{where}: {key}")
        for key in ("y", "groups", "concepts")
        if raw.get(key) is not None
    }
    _in_range(labels["groups"], n_groups, f"{where}: groups", "group_names")
    if "concepts" in labels:
        _in_range(labels["concepts"], n_concepts, f"{where}: concepts", "concept_names")
    return Batch(inputs, labels["y"], labels["groups"], labels.get("concepts"))


def _inputs(value: Any, where: str) -> ModelInputs:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or len(value) == 0:
            raise UserError(f"{where} has shape {tuple(value.shape)}; expected [batch, ...]")
        return value
    if isinstance(value, Mapping) and value:
        sizes = {}
        for key, t in value.items():
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                raise UserError(
                    f"{where}[{key!r}] is {type(t).__name__}; expected a tensor [batch, ...]"
                )
            sizes[key] = len(t)
        if len(set(sizes.values())) > 1:
            raise UserError(f"{where}: its tensors hold different numbers of samples {sizes}")
        return dict(value)
    raise UserError(
        f"{where} is {type(value).__name__}; expected a tensor or a dict of tensors "
        "(passed to the model as keyword arguments)"
    )


def _labels(value: Any, n: int, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{where} is {type(value).__name__}; expected a tensor of shape ({n},)")
    if value.dim() != 1 or len(value) != n:
        raise UserError(
            f"{where} has shape {tuple(value.shape)} but the batch's inputs hold {n} samples; "
            f"expected shape ({n},)"
        )
    if value.dtype.is_floating_point or value.dtype == torch.bool:
        raise UserError(f"{where} has dtype {value.dtype}; expected integer labels")
    return value.long()


def _in_range(values: torch.Tensor, n: int, where: str, names: str) -> None:
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= n:
        raise UserError(f"{where} has values {lo}..{hi}; expected 0..{n - 1} (one per {names})")
