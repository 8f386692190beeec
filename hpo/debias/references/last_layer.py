"""The last-layer references: the model's final linear layer refitted on the balanced
probe split, by cross-entropy (`last_layer`) or as DFR's authors fit it (`dfr`)."""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hpo.debias.dfr import dfr_layer
from hpo.debias.references.base import CannotRun, Fitted, ReferenceSource
from hpo.debias.references.head_retraining import retrain_from_head
from hpo.debias.references.pooled import per_sample_features
from hpo.models.layer_types import LINEAR, LayerType, editable_type
from hpo.models.linear_layers import linear_call_order
from hpo.models.model_inputs import ModelInputs, take

# Samples on which `Dfr.unavailable` checks that the model pools its final layer's
# outputs as one token's (or their mean): enough to catch another pooling, cheap
POOLING_CHECK = 16


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
        if source.val is None:
            return "there is no validation split to choose its regularisation on"
        why = LastLayer().unavailable(source)
        if why is not None:
            return why
        assert source.probe.x is not None
        final = final_linear(source.model, source.probe.x)
        assert final is not None
        if not _per_sample(source, final):
            if source.val_inputs_of is not None or source.val.x is None:
                return (
                    f"its final layer ({final}) sees sequences, and a streamed split keeps "
                    "no model inputs to find the token the model reads"
                )
            for split, x in (("probe", source.probe.x), ("val", source.val.x)):
                sample = take(x, slice(0, POOLING_CHECK))
                features, why = per_sample_features(source.model, final, sample, source.inputs_of)
                if features is None:
                    return f"its final layer ({final}) on the {split} split: {why}"
            return None  # fit checks every sample
        if source.val_inputs_of is not None and source.val_inputs(final) is None:
            return (
                f"the validation split's inputs of the final layer ({final}) were not kept: "
                f"decompose {final} (task.layer), or give val as tensors"
            )
        if source.val_inputs_of is None and source.val.x is None:
            return "the validation split has no model inputs"
        return None

    def fit(self, source: ReferenceSource) -> Fitted:
        assert source.probe.x is not None and source.val is not None
        name = final_linear(source.model, source.probe.x)
        assert name is not None
        if _per_sample(source, name):
            probe_features: torch.Tensor | None = source.inputs_of(name, source.probe.x)
            val_features = source.val_inputs(name)
        else:  # it sees every token: the features of the token the model reads
            assert source.val.x is not None
            probe_features, why = per_sample_features(
                source.model, name, source.probe.x, source.inputs_of
            )
            val_features, why_val = per_sample_features(
                source.model, name, source.val.x, source.inputs_of
            )
            if probe_features is None or val_features is None:
                reason = why if probe_features is None else why_val
                split = "probe" if probe_features is None else "val"
                raise CannotRun(f"its final layer ({name}) on the {split} split: {reason}")
        assert probe_features is not None and val_features is not None
        layer = source.model.get_submodule(name)
        kind = editable_type(layer) or LINEAR
        weight, bias = dfr_layer(
            probe_features,
            source.probe.y,
            source.probe.groups,
            val_features,
            source.val.y,
            source.val.groups,
            n_out=kind.weight(layer).shape[0],
            seed=source.seed,
            has_bias=isinstance(getattr(layer, "bias", None), torch.Tensor),
        )
        own = kind.weight(layer)
        stored = kind.stored(layer, weight.to(dtype=own.dtype, device=own.device))
        overrides = {f"{name}.weight": stored}
        layer_bias = getattr(layer, "bias", None)
        if isinstance(layer_bias, torch.Tensor):
            overrides[f"{name}.bias"] = bias.to(dtype=layer_bias.dtype, device=layer_bias.device)
        return Fitted(overrides=overrides)
