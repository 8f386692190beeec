"""What a control is: a decomposition that learnt nothing, edited exactly as the trial's
SAE is.

A gain belongs to the Faithful-SAE only if the same edit procedure (strategy, budget,
fit, α chosen on validation) does worse on a decomposition that carries no learning.
Each control maps a layer's weight (in × out) and the trial's SAE config to a
decomposition of the same kind, a `FaithfulSAE` whose components sum to (about) that
weight. `lift` = debiased − best control (worst-group accuracy on validation) says what
training the SAE added. A new control is one module and one line in
hpo.debias.controls.registry, naming the SAEConfig fields it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hpo.params import SAEConfig
from hpo.sae.model import FaithfulSAE


@dataclass(frozen=True)
class Control:
    """A decomposition that learnt nothing: how to make one from a layer's weight
    (in × out), and the SAEConfig fields that making it reads, and nothing else reads
    (what its edit is cached by across trials: hpo.debias.edit.controlled)."""

    decompose: Callable[[torch.Tensor, SAEConfig], FaithfulSAE]
    reads: tuple[str, ...]

    def __call__(self, weight_t: torch.Tensor, config: SAEConfig) -> FaithfulSAE:
        return self.decompose(weight_t, config)

    def depends_on(self, config: SAEConfig) -> dict[str, Any]:
        return {name: getattr(config, name) for name in self.reads}
