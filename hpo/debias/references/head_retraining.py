"""Retraining the model from the decomposed layer on: the built-in model's own `head`,
or, for any other model, the head found at its layer (hpo.models.head)."""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hpo.debias.references.base import Fitted, ReferenceSource
from hpo.debias.scoring import CachedSplit
from hpo.models.head import Head
from hpo.models.layer_types import layer_type_of
from hpo.models.training import retrain_head


class RetrainHead:
    """Every layer from the decomposed one on, re-initialised and retrained on the probe
    split from cached inputs (two layers when the decomposed layer is `fc1`). A built-in
    model retrains through its own `head`; any other model through the head found at its
    layer (hpo.models.head): every tensor only the head reads is trained, each module
    owning them re-initialised as its constructor does (where its type says how)."""

    name: ClassVar[str] = "retrain_head"
    description: ClassVar[str] = "all layers from the decomposed one on, retrained on probe"

    def unavailable(self, source: ReferenceSource) -> str | None:
        if _declares_head(source.model, source.layer) or source.head is not None:
            return None
        return (
            f"the model cannot run from {source.layer!r} here: no head was found there (a "
            "user model's is found when its bundle is built; built-in models declare LAYERS "
            "and head())"
        )

    def fit(self, source: ReferenceSource) -> Fitted:
        p = source.probe
        if _declares_head(source.model, source.layer):
            model = copy.deepcopy(source.model)
            with torch.enable_grad():
                retrain_head(model, source.layer, p.z, p.y, seed=source.seed)
            return Fitted(model=model)
        assert source.head is not None
        with torch.enable_grad():
            return Fitted(overrides=retrain_from_head(source.head, source.model, p, source.seed))


def _declares_head(model: nn.Module, layer: str) -> bool:
    return layer in getattr(model, "LAYERS", ()) and callable(getattr(model, "head", None))


def retrain_from_head(
    head: Head,
    model: nn.Module,
    probe: CachedSplit,
    seed: int,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    only: set[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The head's tensors (or `only` these of them) re-initialised, per module of
    `model` that owns nothing else, by its layer type or its `reset_parameters`, and
    trained by cross-entropy on `probe`'s cached values, as the built-in `retrain_head`
    trains its layers. Returns the trained tensors by the base model's keys."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    start = {
        k: v.detach().clone() for k, v in head.parameters().items() if only is None or k in only
    }
    fresh = copy.deepcopy(model)
    for name, module in fresh.named_modules():
        own = {f"{name}.{k}" if name else k: p for k, p in module.named_parameters(recurse=False)}
        if not own or not all(k in start for k in own):
            continue
        kind = layer_type_of(module)
        if kind is not None:
            kind.reset(module)
        elif callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        else:
            continue  # no way to re-initialise it: trained from where it is
        start |= {k: p.detach().clone() for k, p in own.items()}
    params = {k for k, _ in model.named_parameters()}  # the rest (buffers) stay as they are
    trained = {k: nn.Parameter(v) for k, v in start.items() if k in params}
    opt = torch.optim.Adam(trained.values(), lr=lr)
    values, n = probe.values(), len(probe.y)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(probe.y.device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            logits = head({k: v[idx] for k, v in values.items()}, {**start, **trained})
            loss = F.cross_entropy(logits, probe.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
            opt.step()
    return {**start, **{k: v.detach() for k, v in trained.items()}}
