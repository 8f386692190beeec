"""Reference debiasing methods, fitted once per bundle, scored beside every trial.

A reference is `fit(source) -> Fitted`: sklearn-shaped, fitted on the balanced probe
split (or, for the oracle, handed over by a task that can train one), and its output is
an edit of the same model: parameter overrides, or a whole model of the same
architecture. `REFERENCES` maps a name to its method; which ones run is the task's
`references` setting, and part of the bundle's cache key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hpo.debias.leace import leace_eraser
from hpo.debias.scoring import CachedSplit, Overrides
from hpo.models.head import Head
from hpo.models.layer_types import LINEAR, LayerType, editable_type, layer_type_of
from hpo.models.linear_layers import linear_call_order, per_row, rows
from hpo.models.model_inputs import ModelInputs, take
from hpo.registry import Registry


@dataclass
class ReferenceSource:
    """What a reference may fit on: the model, its decomposed layer, the probe split
    (with model inputs), a way to read any module's inputs on it, the task's oracle, the
    model from the layer on where one was found for a user model (hpo.models.head), and
    `val` (with model inputs) for a reference that chooses a hyperparameter there, as
    every edit chooses its α."""

    model: nn.Module
    layer: str
    probe: CachedSplit
    inputs_of: Callable[[str, ModelInputs], torch.Tensor]  # (module name, x) -> its input
    oracle: nn.Module | None
    seed: int
    head: Head | None = None
    val: CachedSplit | None = None


@dataclass
class Fitted:
    """A fitted reference: parameter overrides of the base model, or a whole model."""

    overrides: Overrides | None = None
    model: nn.Module | None = None


class Reference(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]

    def unavailable(self, source: ReferenceSource) -> str | None:
        """Why this reference cannot run on `source`, or None if it can."""
        ...

    def fit(self, source: ReferenceSource) -> Fitted: ...


def final_linear(model: nn.Module, x: ModelInputs) -> str | None:
    """The editable layer (an nn.Linear, mostly) the model calls last on `x`: its
    classifier layer."""
    order = linear_call_order(model, x)
    return order[-1] if order else None


def fit_linear(
    layer: nn.Linear,
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    seed: int,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
) -> nn.Linear:
    """A fresh copy of `layer`, re-initialised and fitted by cross-entropy on `features`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    fresh = copy.deepcopy(layer)
    fresh.reset_parameters()
    opt = torch.optim.Adam(fresh.parameters(), lr=lr)
    n = len(targets)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(features.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(fresh(features[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
            opt.step()
    return fresh.eval()


class LastLayer:
    """Deep feature reweighting's last-layer retraining (Kirichenko et al., 2023): only
    the model's final linear layer, re-initialised and fitted on the balanced probe split."""

    name: ClassVar[str] = "last_layer"
    description: ClassVar[str] = "final linear layer retrained on the balanced probe split"

    def unavailable(self, source: ReferenceSource) -> str | None:
        if source.probe.x is None:
            return "the probe split has no model inputs"
        name = final_linear(source.model, source.probe.x)
        if name is None:
            return "the model calls no editable layer (nn.Linear, ...)"
        if not _per_sample(source, name) and not _in_head(source, name):
            return f"its final layer ({name}) sees sequences, not one vector per sample"
        return None

    def fit(self, source: ReferenceSource) -> Fitted:
        assert source.probe.x is not None
        name = final_linear(source.model, source.probe.x)
        assert name is not None
        layer = source.model.get_submodule(name)
        kind = editable_type(layer) or LINEAR
        if not _per_sample(source, name):
            # it sees every token, and the model pools after it (GPT-2 reads the last
            # one): fitted through the head, with the model's own pooling
            assert source.head is not None
            keys = {k for k in source.head.overridable if k.startswith(f"{name}.")}
            with torch.enable_grad():
                trained = retrain_from_head(
                    source.head, source.model, source.probe, source.seed, only=keys
                )
            return Fitted(overrides=trained)
        with torch.enable_grad():
            features = source.inputs_of(name, source.probe.x)
            fitted = fit_linear(_as_linear(layer, kind), features, source.probe.y, seed=source.seed)
        state = {k: v.detach() for k, v in fitted.state_dict().items()}
        state["weight"] = kind.stored(layer, state["weight"])
        return Fitted(overrides={f"{name}.{k}": v for k, v in state.items()})


def _per_sample(source: ReferenceSource, name: str) -> bool:
    """Whether layer `name` sees one vector per sample (not every token of a sequence)."""
    assert source.probe.x is not None
    return bool(source.inputs_of(name, take(source.probe.x, slice(0, 2))).dim() == 2)


def _in_head(source: ReferenceSource, name: str) -> bool:
    return source.head is not None and f"{name}.weight" in source.head.overridable


def _as_linear(layer: nn.Module, kind: LayerType) -> nn.Linear:
    """The layer itself where it is an nn.Linear, else an nn.Linear of its shape (what
    `fit_linear` re-initialises and fits; the result is written back in its layout)."""
    if isinstance(layer, nn.Linear):
        return layer
    out_features, in_features = kind.weight(layer).shape
    bias = getattr(layer, "bias", None)
    return nn.Linear(in_features, out_features, bias=isinstance(bias, torch.Tensor))


class Dfr:
    """Deep feature reweighting as its authors run it (Kirichenko et al., 2023, DFR on
    held-out data): the final linear layer refitted on the penultimate features of the
    probe split by L1-regularised logistic regression (liblinear, one-vs-rest) on
    standardised features, on group-balanced subsets (each group subsampled to the
    smallest); the regularisation C chosen on validation worst-group accuracy from the
    published grid, then the coefficients averaged over `RETRAINS` balanced subsets.
    The standardisation is folded into the layer's weight and bias, so the result is
    the same model with that layer changed."""

    name: ClassVar[str] = "dfr"
    description: ClassVar[str] = (
        "final linear layer refitted as DFR: L1 logistic regression on standardised "
        "features, group-balanced probe subsets, C chosen on validation"
    )

    def unavailable(self, source: ReferenceSource) -> str | None:
        if source.val is None or source.val.x is None:
            return "the validation split has no model inputs"
        why = LastLayer().unavailable(source)
        final = final_linear(source.model, source.probe.x) if source.probe.x is not None else None
        if why is None and final is not None and not _per_sample(source, final):
            return "its final layer sees sequences; DFR refits one feature vector per sample"
        return why

    def fit(self, source: ReferenceSource) -> Fitted:
        from hpo.debias.dfr import dfr_layer

        assert source.probe.x is not None and source.val is not None
        assert source.val.x is not None
        name = final_linear(source.model, source.probe.x)
        assert name is not None
        layer = source.model.get_submodule(name)
        kind = editable_type(layer) or LINEAR
        weight, bias = dfr_layer(
            source.inputs_of(name, source.probe.x),
            source.probe.y,
            source.probe.groups,
            source.inputs_of(name, source.val.x),
            source.val.y,
            source.val.groups,
            n_out=kind.weight(layer).shape[0],
            seed=source.seed,
        )
        own = kind.weight(layer)
        stored = kind.stored(layer, weight.to(dtype=own.dtype, device=own.device))
        overrides = {f"{name}.weight": stored}
        layer_bias = getattr(layer, "bias", None)
        if isinstance(layer_bias, torch.Tensor):
            overrides[f"{name}.bias"] = bias.to(dtype=layer_bias.dtype, device=layer_bias.device)
        return Fitted(overrides=overrides)


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
            from hpo.models.training import retrain_head

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


LEACE_ROWS = 4096


class Leace:
    """LEACE (Belrose et al., 2023): the least-squares concept eraser of the decomposed
    layer's inputs, fitted on probe with the concept labels (EleutherAI's concept-erasure
    for the statistics, hpo.debias.leace for the eraser) and folded into that layer's
    weight and bias: x ↦ x − (x − μ)(LR)ᵀ becomes W' = W − W·L·R, b' = b + W·L·R·μ. A
    linear edit of the same layer, like Faithful-SAE's."""

    name: ClassVar[str] = "leace"
    description: ClassVar[str] = "least-squares concept erasure folded into the layer"

    def unavailable(self, source: ReferenceSource) -> str | None:
        if source.probe.concepts is None:
            return "the probe split has no concept labels"
        return None

    def fit(self, source: ReferenceSource) -> Fitted:
        from concept_erasure import LeaceFitter

        layer = source.model.get_submodule(source.layer)
        kind = editable_type(layer) or LINEAR
        z = rows(source.probe.z, kind)  # one row per token (or pixel) where it sees several
        assert source.probe.concepts is not None
        concepts = per_row(F.one_hot(source.probe.concepts).double(), source.probe.z, kind)
        layer_bias = getattr(layer, "bias", None)
        affine = isinstance(layer_bias, torch.Tensor)
        # the statistics in float64 from LEACE_ROWS rows at a time: fitting on all rows at
        # once holds three float64 copies of them (2.3 GiB for 16 000 × 4096)
        fitter = LeaceFitter(z.shape[1], concepts.shape[1], affine=affine, dtype=torch.float64)
        parts = zip(torch.split(z, LEACE_ROWS), torch.split(concepts, LEACE_ROWS), strict=True)
        for part, labels in parts:
            fitter.update(part.double(), labels)
        # the eraser as thin factors (hpo.debias.leace): the library's `fitter.eraser`
        # forms a dozen dense d×d matrices, 1745 MiB over the statistics at d = 4096;
        # this, 591 MiB: the shrunk covariance, its eigenvectors and eigh's workspace
        eraser = leace_eraser(fitter)
        own = kind.weight(layer)  # out × in
        weight = own.double()
        erased = weight @ eraser.left @ eraser.right  # W·L·R
        new = (weight - erased).to(own.dtype)
        overrides = {f"{source.layer}.weight": kind.stored(layer, new)}
        if isinstance(layer_bias, torch.Tensor):
            assert eraser.bias is not None
            shift = erased @ eraser.bias
            overrides[f"{source.layer}.bias"] = (layer_bias.double() + shift).to(layer_bias.dtype)
        return Fitted(overrides=overrides)


class Oracle:
    """The same architecture trained without the spurious correlation: a ceiling, from
    tasks that can train one (colored MNIST recolours its training images)."""

    name: ClassVar[str] = "oracle"
    description: ClassVar[str] = "the same model trained on data without the bias"

    def unavailable(self, source: ReferenceSource) -> str | None:
        return None if source.oracle is not None else "this task does not train an oracle"

    def fit(self, source: ReferenceSource) -> Fitted:
        return Fitted(model=source.oracle)


REFERENCES: Registry[Reference] = Registry("reference")
for _reference in (LastLayer(), Dfr(), RetrainHead(), Leace(), Oracle()):
    REFERENCES.register(_reference.name, _reference)
