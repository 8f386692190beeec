"""What a classifier trial measures of its decompositions besides the edit's accuracy:
the share of decisions they change, and their errors."""

from __future__ import annotations

import torch

from hpo.cpus import reproducible_threads
from hpo.models.layer_types import weight_override
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData
from hpo.tasks.base import Saes
from hpo.tasks.classifier_context import ClassifierContext


def prediction_change(ctx: ClassifierContext, saes: Saes) -> float:
    """The share of validation predictions that change when each decomposed weight is
    replaced by the sum of its components: what a faithfulness error means for the model
    (0: the components are the layer, as far as its decisions go)."""
    summed: dict[str, torch.Tensor] = {}
    for layer, sae in saes.items():
        kind, module = ctx.edit_target.layer_type(layer), ctx.model.get_submodule(layer)
        summed |= weight_override(kind, module, layer, sae.effective_weight().T)
    before = ctx.scorer.logits("val").argmax(-1)
    after = ctx.scorer.logits("val", summed).argmax(-1)
    return float((before != after).double().mean())


def worst_errors(per_layer: list[dict[str, float]]) -> dict[str, float]:
    """The largest of each error over the decomposed layers: a constraint on the
    faithfulness error holds for every layer."""
    return {key: max(e[key] for e in per_layer) for key in per_layer[0]}


@torch.no_grad()
@reproducible_threads()
def decomposition_errors(sae: FaithfulSAE, data: SAEData) -> dict[str, float]:
    """Relative faithfulness error ‖W − ΣP‖²/‖W‖² and relative reconstruction error.
    One thread: a sum over more than 32768 numbers is added in one part per thread."""
    w = data.weight_t
    faith = float((w - sae.effective_weight()).square().sum() / w.square().sum())
    residual = target = 0.0  # summed ERROR_ROWS rows at a time: no [N, C] or [N, out] whole
    for inputs, targets in zip(
        torch.split(data.inputs, ERROR_ROWS), torch.split(data.targets, ERROR_ROWS), strict=True
    ):
        recon, _, _ = sae(inputs)
        residual += float((recon - targets).double().square().sum())
        target += float(targets.double().square().sum())
    return {"faithfulness_error": faith, "reconstruction_error": residual / max(target, 1e-12)}


ERROR_ROWS = 4096
