"""LEACE, the concept-erasure reference: a linear edit of the decomposed layer itself,
as Faithful-SAE's edit is."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from hpo.debias.leace import leace_eraser
from hpo.debias.references.base import Fitted, ReferenceSource
from hpo.models.layer_types import LINEAR, editable_type
from hpo.models.linear_layers import per_row, rows

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
