"""What a classifier trial measures besides accuracy: the group-balanced loss a fitted
removal minimises, the share of decisions a decomposition changes, and its errors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hpo.cpus import reproducible_threads
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData
from hpo.tasks.base import Saes
from hpo.tasks.bundle import ClassifierContext


def balanced_probe_loss(
    ctx: ClassifierContext,
    edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """removed parts -> cross-entropy on probe with every group weighted equally (the
    balanced split's groups, as DFR balances them): what a fitted removal minimises."""
    probe = ctx.splits["probe"]
    sizes = torch.bincount(probe.groups, minlength=len(ctx.group_names)).double()
    weights = (1.0 / sizes.clamp(min=1))[probe.groups]
    weights = (weights / weights.sum()).to(torch.get_default_dtype())

    def loss(removed: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = ctx.scorer.forward("probe", edit(removed))
        return (F.cross_entropy(logits, probe.y, reduction="none") * weights).sum()

    return loss


def prediction_change(ctx: ClassifierContext, saes: Saes) -> float:
    """The share of validation predictions that change when each decomposed weight is
    replaced by the sum of its components: what a faithfulness error means for the model
    (0: the components are the layer, as far as its decisions go)."""
    summed = {f"{layer}.weight": sae.effective_weight().T for layer, sae in saes.items()}
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
        data.inputs.split(ERROR_ROWS), data.targets.split(ERROR_ROWS), strict=True
    ):
        recon, _, _ = sae(inputs)
        residual += float((recon - targets).double().square().sum())
        target += float(targets.double().square().sum())
    return {"faithfulness_error": faith, "reconstruction_error": residual / max(target, 1e-12)}


ERROR_ROWS = 4096
