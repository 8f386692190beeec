"""What the edit procedure needs of a task: its model, the probe inputs of each layer it
may edit, and a scorer.

A task hands over an `EditTarget` and is done: the procedure turns a plan into the
model's new tensors (`overrides`), fits with the group-balanced loss on probe
(`group_loss`) and scores with the scorer. Nothing here knows which task it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hpo.debias import ablation
from hpo.debias.scoring import Overrides, Scorer
from hpo.debias.strategies.base import EditLoss
from hpo.models.layer_types import LINEAR, LayerType
from hpo.models.linear_layers import per_row, rows


@dataclass(frozen=True)
class EditTarget:
    """The model an edit changes and the data it is chosen and scored on.

    `probe_inputs`: each editable layer's inputs on the probe split, as the model feeds
    them ([N, in], or [N, ..., in] where the layer sees sequences). The scorer holds the
    splits (probe with its labels, val, test) and the group names. `layer_types`: each
    editable layer's kind (hpo.models.layer_types; nn.Linear where none is given), which
    says how its weight is stored and its inputs are rows."""

    model: nn.Module
    scorer: Scorer
    probe_inputs: Mapping[str, torch.Tensor]
    n_concepts: int
    layer_types: Mapping[str, LayerType] = field(default_factory=dict)
    _means: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def editable_layers(self) -> tuple[str, ...]:
        return tuple(self.probe_inputs)

    def layer_type(self, layer: str) -> LayerType:
        return self.layer_types.get(layer, LINEAR)

    def holding_out(self, share: float, seed: int = 0) -> EditTarget:
        """This target with the probe split cut in two, within each group: a plan fits on
        the "probe" part and is scored on the held-out `share`, as its "val" split. The
        cut depends on `seed` only, so every decomposition of a study sees the same. A
        group of two or more keeps at least one sample on each side, whatever `share`."""
        probe = self.scorer.splits["probe"]
        fit_index, held_index = split_within_groups(probe.groups, share, seed)
        splits = {"probe": probe.subset(fit_index), "val": probe.subset(held_index)}
        scorer = Scorer(
            self.model,
            self.scorer.layer,
            splits,
            self.scorer.group_names,
            self.scorer.batch_size,
            head=self.scorer.head,
        )
        inputs = {layer: z[fit_index] for layer, z in self.probe_inputs.items()}
        return EditTarget(self.model, scorer, inputs, self.n_concepts, self.layer_types)

    def weight_t(self, layer: str) -> torch.Tensor:
        """The layer's weight in (in × out) layout, detached: what a decomposition sums to."""
        weight = self.layer_type(layer).weight(self.model.get_submodule(layer))
        return weight.detach().T.contiguous()

    def rows(self, layer: str) -> torch.Tensor:
        """The layer's probe inputs as rows (a token or pixel each where it sees several)."""
        return rows(self.probe_inputs[layer], self.layer_type(layer))

    def mean_input(self, layer: str) -> torch.Tensor:
        """The layer's mean probe input (cached: a fit asks for it at every step)."""
        if layer not in self._means:
            self._means[layer] = self.rows(layer).mean(dim=0)
        return self._means[layer]

    def concepts(self, layer: str) -> torch.Tensor:
        """Each of the layer's probe rows' concept, one-hot."""
        concepts = self.scorer.splits["probe"].concepts
        assert concepts is not None
        one_hot = F.one_hot(concepts, self.n_concepts).float()
        return per_row(one_hot, self.probe_inputs[layer], self.layer_type(layer))

    def overrides(
        self,
        parts: Mapping[str, torch.Tensor],
        alpha: float,
        *,
        compensate_bias: bool,
        bias_shift: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The edited layers' new tensors: W − α·Aᵀ in each; with `compensate_bias` each
        bias moved by what its removed part contributed on average over probe, and by
        α × its `bias_shift` where one is given."""
        out: dict[str, torch.Tensor] = {}
        for name, part in parts.items():
            layer, kind = self.model.get_submodule(name), self.layer_type(name)
            weight, bias = kind.weight(layer), _tensor(layer, "bias")
            # detached: fitting an edit must not write gradients into the base model
            edited = ablation.debiased_weight(weight.detach(), part, alpha)
            out[f"{name}.weight"] = kind.stored(layer, edited)
            shift = None if bias_shift is None else bias_shift.get(name)
            if bias is None or (not compensate_bias and shift is None):
                continue
            moved = bias.detach()
            if compensate_bias:
                moved = ablation.compensated_bias(moved, part, self.mean_input(name), alpha)
            if shift is not None:
                moved = moved + alpha * shift
            out[f"{name}.bias"] = moved
        return out

    def group_loss(
        self,
        edit: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], Overrides],
        split: str = "probe",
    ) -> EditLoss:
        """(removed parts, bias moves) -> cross-entropy on `split` with every group
        weighted equally (as DFR balances them), of the model edited by `edit`."""
        data = self.scorer.splits[split]
        n_groups = len(self.scorer.group_names)
        sizes = torch.bincount(data.groups, minlength=n_groups).double()
        weights = (1.0 / sizes.clamp(min=1))[data.groups]
        weights = (weights / weights.sum()).to(torch.get_default_dtype())

        def loss(removed: dict[str, torch.Tensor], shifts: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = self.scorer.forward(split, edit(removed, shifts))
            return (F.cross_entropy(logits, data.y, reduction="none") * weights).sum()

        return loss


def split_within_groups(
    groups: torch.Tensor, share: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) row indices, sorted: `share` of each group held out, drawn by
    `seed`; a group of two or more keeps at least one row on each side."""
    gen = torch.Generator().manual_seed(seed)
    held, kept = [], []
    for group in torch.unique(groups).tolist():
        members = torch.nonzero(groups == group).flatten().cpu()
        members = members[torch.randperm(len(members), generator=gen)]
        n = int(round(share * len(members)))
        n = min(max(n, 1), len(members) - 1) if len(members) >= 2 else 0
        held.append(members[:n])
        kept.append(members[n:])
    device = groups.device
    return torch.cat(kept).sort().values.to(device), torch.cat(held).sort().values.to(device)


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """A module's parameter (or buffer) `name`, None where it has none (a bias=False layer)."""
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None
