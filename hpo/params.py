"""What one trial samples or fixes, by role: the loss weights and the decomposition's
structure (hpo.sae reads them), the edit and its α grid (hpo.debias.edit reads them), and
their union `TrialParams`, which is a study file's `[params]` and what `[search]` names.

Each role is its own frozen, strict model; `TrialParams` inherits them all, so the study
file and the search space see one flat set of names, and each layer of the code receives
the part that is its own (`params.sae_config`, `params.edit_config`, ...). Defaults live
here and nowhere else.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator

from hpo.strict import Strict

MAX_EDIT_SEARCH = 64  # combinations an in-trial edit search may try
# Seeds (task and SAE): numpy takes at most 2**32 - 1; the headroom leaves room for the
# offsets confirm and the splits add to them.
MAX_SEED = 2**31 - 1


class LossWeights(Strict):
    """How much each term of the Faithful-SAE's training loss weighs (hpo.sae.training)."""

    faithful_weight: float = Field(1.6, ge=0)
    recon_weight: float = Field(1.0, ge=0)
    rank_weight: float = Field(0.0, ge=0)
    cond_weight: float = Field(0.5, ge=0)
    sparsity_weight: float = Field(0.13, ge=0)
    decorr_weight: float = Field(0.4, ge=0)


class SAEConfig(LossWeights):
    """The decomposition's structure and how it is trained, its loss weights included:
    all that hpo.sae reads."""

    faithful_ramp: bool = False
    # Weigh each latent's L1 (sparsity_weight) by its decoder row's norm, so that moving
    # scale from encoder to decoder cannot make the penalty fade (see losses.sparsity).
    sparsity_decoder_norm: bool = False
    # How the training loss measures ‖W − E·D‖²: "exact" forms E·D (in × C × out
    # multiply-adds a step); "sketch" an unbiased estimate from `sketch_size` random
    # probes, ‖(W − E·D)S‖² (see hpo.sae.losses.faithfulness_sketch); "auto" sketches where
    # that is several times cheaper (hpo.sae.training.faithful_sketch_size). Evaluation
    # and the recorded faithfulness_error are always exact.
    faithful_estimate: Literal["auto", "exact", "sketch"] = "auto"
    sketch_size: int = Field(64, ge=1)
    schatten_p: float = Field(1.0, gt=0)
    # After training (and at each pruning evaluation), move the factors by the least
    # regularised change that makes E·D = W (hpo.sae.projection): the components then sum
    # to the layer and replacing it by them changes no decision; the reconstruction error
    # through the top-k latents rises a little (it is recorded). The untrained control is
    # projected the same way, so that the controls stay the same procedure.
    project_faithful: bool = False
    n_components: int = Field(1024, ge=1)
    top_k: int = Field(32, ge=1)
    rank: int = Field(1, ge=1)
    init: Literal["xavier", "tied"] = "xavier"  # see FaithfulSAE.tie_to
    lr: float = Field(5e-4, gt=0)
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(512, ge=1)
    eval_every: int = Field(500, ge=1)  # steps between the scores a pruner sees
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _k_fits(self) -> Self:
        if self.top_k > self.n_components:
            raise ValueError(
                f"top_k ({self.top_k}) must not exceed n_components ({self.n_components})"
            )
        return self


FitBias = Literal["off", "components", "layers", "first"]


class EditSearch(Strict):
    """Edit settings tried inside every trial (`[params.edit_search]`), for each trained
    decomposition and, the same way, for each control: every combination of the values
    given is planned on the probe split less a held-out `holdout` share of each group,
    scored on that share (α swept there too), and the best (worst group, then the worst
    quarter's mean, then fewer components) is refitted on the whole probe split and
    scored on validation as any edit. Training the decomposition is most of a trial and
    an edit is cheap, so every trained SAE gets its best edit, and the sampler searches
    what shapes the decomposition. Empty: the edit is the one `[params]` describes.
    Pruning evaluations score that edit, without the search: the same cheaper measure
    for every trial at a given step."""

    ablate: tuple[str, ...] = ()
    max_components: tuple[int, ...] = ()
    removal_l1: tuple[float, ...] = ()
    amplify: tuple[float, ...] = ()
    fit_bias: tuple[FitBias, ...] = ()
    ablate_bias: tuple[bool, ...] = ()
    n_ablate: tuple[int, ...] = ()
    holdout: float = Field(0.3, gt=0, lt=1)

    def settings(self) -> dict[str, tuple[Any, ...]]:
        """The searched fields and their values, in the order they are combined."""
        return {
            name: values
            for name in type(self).model_fields
            if name != "holdout" and (values := getattr(self, name))
        }

    @property
    def size(self) -> int:
        """How many combinations one search tries."""
        return math.prod(len(v) for v in self.settings().values()) if self.settings() else 0


class EditConfig(Strict):
    """Which components an edit changes and by how much: what hpo.debias.edit reads.

    `ablate` names an edit strategy (hpo.debias.strategies; the study file is checked
    against that registry), which chooses the components from the probe split's labels
    of its regime; `max_components` caps how many (whole or in part, over all edited
    layers), and every strategy honours it exactly.
    """

    ablate: str = "conditioned"
    # Latents conditioned on each concept during training (SCAR): what `conditioned`
    # removes; the trial labels the SAE's data with them.
    concept_latents: int = Field(1, ge=1)
    max_components: int | None = Field(None, ge=1)  # None: no limit
    # Controls: the trial's own edit procedure (strategy, budget, fit, α on val) applied
    # to decompositions that learnt nothing (hpo.debias.controls: "random", the SAE
    # before training; "svd", the weight's singular vectors); `lift` = debiased − best.
    controls: tuple[str, ...] = ("random", "svd")
    n_ablate: int = Field(2, ge=1)  # attribution: how many components
    # A fitted removal: Adam steps and rate, and removal_l1 × the mean |fraction| to keep
    # the removal small.
    fit_steps: int = Field(300, ge=1)
    fit_lr: float = Field(0.05, gt=0)
    removal_l1: float = Field(0.0, ge=0)
    # Signed fractions: a fitted edit may amplify a component, by up to `amplify` times
    # itself (fraction down to −amplify), as well as remove it (0: removal only).
    amplify: float = Field(0.0, ge=0)
    # A fitted edit may move biases too: "components", along each kept component's
    # output direction (one number per component: readable, and tied to the
    # decomposition); "layers", any move of every edited layer's bias; "first", of the
    # first edited layer's only; "off", none.
    fit_bias: FitBias = "off"
    edit_search: EditSearch = EditSearch()

    @model_validator(mode="after")
    def _search_is_valid(self) -> Self:
        """Every value `edit_search` tries is one this config could hold."""
        for name, values in self.edit_search.settings().items():
            for value in values:
                try:
                    type(self).model_validate({**self.model_dump(), "edit_search": {}, name: value})
                except ValidationError as err:
                    raise ValueError(
                        f"edit_search.{name}: value {value!r} is invalid: {err.errors()[0]['msg']}"
                    ) from None
        if self.edit_search.size > MAX_EDIT_SEARCH:
            raise ValueError(
                f"edit_search tries {self.edit_search.size} combinations; at most "
                f"{MAX_EDIT_SEARCH} (each is a fit, for the SAE and every control)"
            )
        return self

    # Move each edited layer's bias by the removed components' mean contribution on probe
    # (see hpo.debias.ablation.compensated_bias).
    ablate_bias: bool = False


class AlphaGrid(Strict):
    """How strongly the edit is applied: one α (given), or the α chosen on validation
    from a grid 0 … alpha_max of alpha_steps points."""

    alpha: float | None = Field(None, ge=0)
    alpha_max: float = Field(1.2, gt=0)
    alpha_steps: int = Field(13, ge=2)
    # An α chosen at the grid's upper edge extends the grid by its own length, at most
    # this many times (0: never), instead of stopping where the best may lie beyond.
    alpha_extend: int = Field(3, ge=0)


class TrialParams(AlphaGrid, EditConfig, SAEConfig):
    """Everything one Faithful-SAE trial samples or fixes; the search space names these.

    The study file and the search space see one flat set of names; each layer of the
    code receives the part that is its own (`loss_weights`, `sae_config`,
    `edit_config`, `alpha_grid`), mapped here and nowhere else.
    """

    # Which layers to decompose and edit: one nn.Linear, or several joined by "+"
    # ("fc1+fc2"), each decomposed on its own inputs and edited with the same α;
    # None: the task's layer. A layer may be the task's or any called after it.
    layers: str | None = None
    device: str = "auto"

    @field_validator("layers")
    @classmethod
    def _layer_names(cls, layers: str | None) -> str | None:
        if layers is None:
            return None
        names = layers.split("+")
        if any(not n.strip() or n != n.strip() for n in names):
            raise ValueError(f"{layers!r}: give layer names joined by '+', e.g. 'fc1+fc2'")
        if len(set(names)) != len(names):
            raise ValueError(f"{layers!r} names a layer twice")
        return layers

    def without_edit_search(self) -> TrialParams:
        """These params with the edit `[params]` describes, no in-trial search."""
        return self.model_copy(update={"edit_search": EditSearch()})

    def _role(self, role: type[R]) -> R:
        return role.model_validate({name: getattr(self, name) for name in role.model_fields})

    @property
    def loss_weights(self) -> LossWeights:
        return self._role(LossWeights)

    @property
    def sae_config(self) -> SAEConfig:
        return self._role(SAEConfig)

    @property
    def edit_config(self) -> EditConfig:
        return self._role(EditConfig)

    @property
    def alpha_grid(self) -> AlphaGrid:
        return self._role(AlphaGrid)


R = TypeVar("R", bound=Strict)
