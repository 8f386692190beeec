"""Controls: decompositions that learnt nothing, edited exactly as the trial's SAE is.

A gain belongs to the Faithful-SAE only if the same edit procedure (strategy, budget,
fit, α chosen on validation) does worse on a decomposition that carries no learning.
Each control maps a layer's weight (in × out) and the trial's params to a decomposition
of the same kind, a `FaithfulSAE` whose components sum to (about) that weight:

- `random`: the trial's own SAE before training (same seed, same init): any component
  basis of the right shape, so a supervised fit in it is a fine-tune in a random subspace.
- `svd`: the weight's singular vectors, min(in, out) exact rank-1 components: the
  decomposition a linear-algebra textbook gives for free.

`lift` = debiased − best control (worst-group accuracy on validation) says what training
the SAE added. A new control is one function and one `CONTROLS.register` line naming what it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hpo.config import SAEConfig
from hpo.cpus import reproducible_threads
from hpo.registry import Registry
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import as_scored, initial_sae


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


def untrained(weight_t: torch.Tensor, params: SAEConfig) -> FaithfulSAE:
    """The trial's SAE as training finds it (projected to the weight where the trial's
    is: `project_faithful`); the global random state is left as it was."""
    devices = [weight_t.device] if weight_t.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        sae = initial_sae(weight_t, params)
    return as_scored(sae, weight_t, params, in_place=True).eval()


@torch.no_grad()
def singular_vectors(weight_t: torch.Tensor, params: SAEConfig) -> FaithfulSAE:
    """W = Σ σ_i u_i v_iᵀ as rank-1 components E_i = √σ_i u_i, D_i = √σ_i v_iᵀ, largest
    first (so "the first latents" are the largest directions)."""
    with reproducible_threads():  # LAPACK splits its sums by thread count: see hpo.cpus
        u, s, vh = torch.linalg.svd(weight_t.double(), full_matrices=False)
    n = s.numel()
    sae = FaithfulSAE(weight_t.shape[0], weight_t.shape[1], n, min(params.top_k, n), rank=1)
    root = s.sqrt()
    sae.encoder.copy_((u * root).to(weight_t.dtype))
    sae.decoder.copy_((root[:, None] * vh).to(weight_t.dtype))
    return sae.to(weight_t.device).eval()


CONTROLS: Registry[Control] = Registry("control")
# what initial_sae and as_scored read
CONTROLS.register(
    "random",
    Control(untrained, ("seed", "n_components", "top_k", "rank", "init", "project_faithful")),
)
CONTROLS.register("svd", Control(singular_vectors, ("top_k",)))


def get_control(name: str) -> Control:
    return CONTROLS.get(name)
