"""The `random` control: the trial's own SAE before training (same seed, same init): any
component basis of the right shape, so a supervised fit in it is a fine-tune in a random
subspace."""

from __future__ import annotations

import torch

from hpo.debias.controls.base import Control
from hpo.params import SAEConfig
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import as_scored, initial_sae


def untrained(weight_t: torch.Tensor, params: SAEConfig) -> FaithfulSAE:
    """The trial's SAE as training finds it (projected to the weight where the trial's
    is: `project_faithful`); the global random state is left as it was."""
    devices = [weight_t.device] if weight_t.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        sae = initial_sae(weight_t, params)
    return as_scored(sae, weight_t, params, in_place=True).eval()


# what initial_sae and as_scored read
RANDOM = Control(untrained, ("seed", "n_components", "top_k", "rank", "init", "project_faithful"))
