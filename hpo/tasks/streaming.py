"""Layer inputs of a split that streams, collected batch by batch into a bounded cache.

A split given as a Dataset or DataLoader (hpo.tasks.batches says what a batch holds) is
read once: each batch is checked, hashed into the data's digest, and run through the
model with hooks on the layers whose inputs the bundle caches. What is kept is bounded
by the split's row cap, not by the data set: the samples with the smallest keys
(hpo.tasks.row_sampling), collected in a buffer that is cut back to the cap whenever it
holds twice as many, and a batch's samples that can no longer make the cut never run
through the model. A layer that sees sequences keeps `tokens_per_sample` tokens of each
sample's real ones. The cached split then serves references and scoring exactly as a
split given as tensors does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hpo.debias.scoring import CachedSplit
from hpo.errors import UserError
from hpo.models.classifiers import runs_from_layer
from hpo.models.model_inputs import ModelInputs, call_model, take, tensors, to_device
from hpo.tasks.batches import Batch
from hpo.tasks.row_sampling import gather_tokens, sample_keys, smallest, token_positions

MASK_KEY = "attention_mask"  # the inputs' key that marks real tokens, where there is one


@dataclass(frozen=True)
class RowPlan:
    """How many rows a split keeps: at most `max_rows` samples (None: all), and
    `tokens_per_sample` tokens of each where a layer sees sequences (None: all)."""

    max_rows: int | None
    tokens_per_sample: int | None
    seed: int


@dataclass
class StreamedSplit:
    split: CachedSplit
    layer_inputs: dict[str, torch.Tensor]  # the other hooked layers' inputs (probe, val)
    example: ModelInputs  # the first two samples' model inputs


def digest_batch(digest: hashlib._Hash, batch: Batch) -> None:
    for t in [*tensors(batch.inputs), batch.y, batch.groups, batch.concepts]:
        if t is not None:
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


@torch.no_grad()
def batch_layer_inputs(
    model: nn.Module, names: Sequence[str], x: ModelInputs, where: str
) -> dict[str, torch.Tensor]:
    """What each module in `names` receives when `model` runs on one batch `x`: from the
    model's `layer_input` where it has one for that layer, else by a forward pre-hook
    (one forward pass for all of them)."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if isinstance(x, torch.Tensor) and runs_from_layer(model, name):
            out[name] = model.layer_input(x, name)
    hooked = [n for n in names if n not in out]
    if not hooked:
        return out
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in hooked}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: captured[n].append(args[0].detach())
        )
        for n in hooked
    ]
    try:
        call_model(model, x)
    except Exception as err:
        text = str(err).strip().splitlines()
        raise UserError(
            f"{where}: the model failed on its inputs: {type(err).__name__}: "
            f"{text[0] if text else ''}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    for name, got in captured.items():
        if len(got) != 1:
            raise UserError(
                f"layer {name!r} is called {len(got)} times per forward(); decompose a layer "
                "the model calls once"
            )
        out[name] = got[0]
    return out


def sample_tokens(
    z: torch.Tensor, x: ModelInputs, index: torch.Tensor, plan: RowPlan, where: str
) -> torch.Tensor:
    """A sequence layer's inputs [B, T, d] cut to [B, k, d] (k = tokens_per_sample) of
    each sample's real tokens (`attention_mask` of the inputs, where it has T columns);
    anything else as it is."""
    k = plan.tokens_per_sample
    if k is None or z.dim() != 3:
        return z
    valid = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    if isinstance(x, Mapping) and MASK_KEY in x and tuple(x[MASK_KEY].shape) == z.shape[:2]:
        valid = x[MASK_KEY].to(z.device).bool()
    try:
        positions = token_positions(plan.seed, index, valid, k)
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None
    return gather_tokens(z, positions)


class Reservoir:
    """The samples with the smallest keys seen so far, at most `cap` (None: all), held
    as flat named tensors; cut back whenever it holds 2·cap."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.parts: list[dict[str, torch.Tensor]] = []
        self.held = 0
        self.threshold: int | None = None  # keys at or above it can no longer make the cut

    def wanted(self, keys: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            return torch.ones(len(keys), dtype=torch.bool)
        return keys < self.threshold

    def add(self, part: dict[str, torch.Tensor], where: str) -> None:
        if self.parts and set(part) != set(self.parts[0]):
            odd = sorted(set(part) ^ set(self.parts[0]))[0]
            raise UserError(f"{where}: {_NAMES.get(odd, odd)} is in some batches only")
        self.parts.append(part)
        self.held += len(part["keys"])
        if self.cap is not None and self.held >= 2 * self.cap:
            self._cut()

    def _cut(self) -> None:
        merged = self._merged()
        assert self.cap is not None
        keep = smallest(merged["keys"], self.cap)
        merged = {k: v[keep.to(v.device)] for k, v in merged.items()}
        self.parts, self.held = [merged], len(keep)
        if len(keep) == self.cap:
            self.threshold = int(merged["keys"].max())

    def _merged(self) -> dict[str, torch.Tensor]:
        if len(self.parts) == 1:
            return self.parts[0]
        return {k: _cat(k, [p[k] for p in self.parts]) for k in self.parts[0]}

    def result(self) -> dict[str, torch.Tensor]:
        """What was kept, in the order the samples came."""
        if self.cap is not None:
            self._cut()
        merged = self._merged()
        order = merged["index"].argsort()
        return {k: v[order.to(v.device)] for k, v in merged.items()}


_NAMES = {"c": "'concepts'", "y": "'y'", "g": "'groups'"}


def _cat(key: str, parts: list[torch.Tensor]) -> torch.Tensor:
    shapes = sorted({tuple(p.shape[1:]) for p in parts})
    if len(shapes) > 1:
        what = (
            f"layer {key[2:]!r}'s inputs"
            if key.startswith("z:")
            else f"inputs[{key[2:]!r}]"
            if key.startswith("x.")
            else "inputs"
        )
        hint = " or set UserTask.tokens_per_sample" if key.startswith("z:") else ""
        raise UserError(
            f"{what} have per-sample shape {shapes[0]} in one batch and {shapes[1]} in "
            f"another; pad sequences to one length (padding='max_length'){hint}"
        )
    return torch.cat(parts)


def stream_split(
    model: nn.Module,
    layer: str,
    others: Sequence[str],
    batches: Iterable[Batch],
    plan: RowPlan,
    *,
    salt: int,
    keep_x: bool,
    device: torch.device,
    digest: hashlib._Hash,
    where: str,
) -> StreamedSplit:
    """The cached split of a streamed split: `layer`'s inputs (and those of `others`) on
    the samples the row plan keeps, with their labels and, where `keep_x`, model inputs."""
    reservoir = Reservoir(plan.max_rows)
    example: ModelInputs | None = None
    seen = 0
    for batch in batches:
        digest_batch(digest, batch)
        n = len(batch)
        index = torch.arange(seen, seen + n)
        seen += n
        if example is None:
            example = to_device(take(batch.inputs, slice(0, 2)), device)
        keys = sample_keys(plan.seed, index, salt)
        wanted = reservoir.wanted(keys)
        if not bool(wanted.any()):
            continue
        sel = wanted.nonzero()[:, 0]
        x = to_device(take(batch.inputs, sel), device)
        inputs = batch_layer_inputs(model, [layer, *others], x, f"{where} (batch at {seen - n})")
        part = {"keys": keys[sel], "index": index[sel], "y": batch.y[sel], "g": batch.groups[sel]}
        if batch.concepts is not None:
            part["c"] = batch.concepts[sel]
        part |= _cached_values(inputs, x, index[sel], plan, where, keep_x)
        reservoir.add(part, where)
    kept = reservoir.result()
    assert example is not None
    return _streamed(kept, layer, others, example, keep_x=keep_x, device=device)


def _cached_values(
    inputs: dict[str, torch.Tensor],
    x: ModelInputs,
    index: torch.Tensor,
    plan: RowPlan,
    where: str,
    keep_x: bool,
) -> dict[str, torch.Tensor]:
    """A batch's kept samples' layer inputs (tokens sampled) and, where `keep_x`, model
    inputs, as flat named tensors on the CPU: what the reservoir holds."""
    part: dict[str, torch.Tensor] = {}
    for name, z in inputs.items():
        part[f"z:{name}"] = sample_tokens(z, x, index, plan, where).cpu()
    if keep_x:
        flat = {"x": x} if isinstance(x, torch.Tensor) else {f"x.{k}": v for k, v in x.items()}
        part |= {k: v.cpu() for k, v in flat.items()}
    return part


def _streamed(
    kept: dict[str, torch.Tensor],
    layer: str,
    others: Sequence[str],
    example: ModelInputs,
    *,
    keep_x: bool,
    device: torch.device,
) -> StreamedSplit:
    """The reservoir's flat tensors back as a cached split and the other layers' inputs."""
    x_kept: ModelInputs | None = None
    if keep_x:
        x_kept = (
            kept["x"]
            if "x" in kept
            else {k.removeprefix("x."): v for k, v in kept.items() if k.startswith("x.")}
        )
        x_kept = to_device(x_kept, device)
    split = CachedSplit(
        z=kept[f"z:{layer}"].to(device),
        y=kept["y"].to(device),
        groups=kept["g"].to(device),
        concepts=kept["c"].to(device) if "c" in kept else None,
        x=x_kept,
    )
    return StreamedSplit(
        split=split,
        layer_inputs={name: kept[f"z:{name}"].to(device) for name in others},
        example=example,
    )
