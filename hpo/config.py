"""The schema of a study file: the one source of truth for every default.

The CLI, the tests and the README never repeat a default; they read it from here.
Every model is frozen and forbids unknown keys, so that a typo in a study file is an
error naming the key instead of a silently ignored setting. Types are strict: TOML says
what a value is, so `n_trials = "2"` is an error, not a 2 (an int is still a fine float),
and no float may be infinite or NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from hpo.search_spec import Fixed, SearchSpec, spec_contains, spec_describe, spec_extremes
from hpo.strict import Strict

Direction = Literal["maximize", "minimize"]


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
    seed: int = 0

    @model_validator(mode="after")
    def _k_fits(self) -> Self:
        if self.top_k > self.n_components:
            raise ValueError(
                f"top_k ({self.top_k}) must not exceed n_components ({self.n_components})"
            )
        return self


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
    fit_bias: Literal["off", "components", "layers", "first"] = "off"
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


# ---- the study service -------------------------------------------------------------


class TaskConfig(Strict):
    """Base of every `[task]` section: strict (as the whole study file), frozen, seeded.

    Each task kind subclasses it with its own fields and says which objectives its
    results offer; the study file is checked against those, so this module never asks
    the task registry (hpo.tasks) anything.
    """

    kind: str
    seed: int = 0
    objectives: ClassVar[Mapping[str, Direction]] = {}
    # The fields that name files or folders: a relative one is resolved against the
    # study file's folder when the file is read (hpo.service.study_file).
    path_fields: ClassVar[tuple[str, ...]] = ()


class StudySection(Strict):
    name: str = Field(min_length=1)
    objectives: tuple[str, ...] = ("worst_group",)
    directions: tuple[Direction, ...] | None = None
    n_trials: int = Field(50, ge=1)
    timeout: float | None = Field(None, gt=0)
    # Trials whose relative faithfulness error ‖W − ΣP‖²/‖W‖² exceeds this are infeasible
    # (Optuna's constrained optimization): the weight is no longer the sum of components.
    max_faithfulness_error: float | None = Field(None, gt=0)
    # ... and trials that change more than this share of validation predictions when each
    # weight is replaced by the sum of its components (`prediction_change`): what a
    # faithfulness error means for the model's decisions.
    max_prediction_change: float | None = Field(None, ge=0, le=1)
    # The first trial of a new study runs the file's [params] (Optuna's enqueue_trial):
    # the search starts from a known configuration, which it must then beat, and which
    # `hpo confirm` weighs beside the others. Each searched field's [params] value must
    # be one its [search] entry can sample.
    start_from_params: bool = False


class StorageSection(Strict):
    url: str | None = None
    url_env: str | None = None
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    heartbeat_interval: int = Field(10, ge=1)
    grace_period: int = Field(30, ge=2)
    max_retry: int = Field(3, ge=0)
    artifacts: str | None = None


class SamplerSection(Strict):
    name: str = "tpe"  # a name in hpo.service.samplers.SAMPLERS (checked by parse_study)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class PrunerSection(Strict):
    name: str = "median"  # a name in hpo.service.samplers.PRUNERS (checked by parse_study)
    options: dict[str, Any] = Field(default_factory=dict)


class StudyFile(Strict):
    """A whole study file. `params` fixes values; `search` samples them per trial."""

    study: StudySection
    storage: StorageSection = StorageSection()
    sampler: SamplerSection = SamplerSection()
    pruner: PrunerSection = PrunerSection()
    # A task's own config class, chosen by `kind` from the task registry and validated
    # by hpo.service.study_file.parse_study before the whole file is.
    task: SerializeAsAny[TaskConfig]
    params: TrialParams = TrialParams()
    search: dict[str, SearchSpec] = Field(default_factory=dict)

    @field_validator("search", mode="before")
    @classmethod
    def _bare_values_are_fixed(cls, search: Any) -> Any:
        if not isinstance(search, dict):
            return search
        return {
            k: v if isinstance(v, (dict, BaseModel)) else {"value": v} for k, v in search.items()
        }

    @field_validator("task", mode="before")
    @classmethod
    def _task_config(cls, task: Any) -> Any:
        """`[task]` arrives validated by its kind's own config class (parse_study)."""
        if isinstance(task, TaskConfig) and type(task) is not TaskConfig:
            return task
        raise ValueError("needs a task kind's config (read study files with parse_study)")

    def _params_in_search(self) -> None:
        for name, spec in self.search.items():
            value = getattr(self.params, name)
            if not spec_contains(spec, value):
                raise ValueError(
                    f"params.{name} = {value!r} is outside search.{name} "
                    f"({spec_describe(spec)}), so study.start_from_params cannot enqueue it; "
                    f"set params.{name} to a value the search can sample"
                )

    def start_params(self) -> dict[str, Any]:
        """The searched fields' [params] values: the trial `start_from_params` enqueues."""
        return {
            n: getattr(self.params, n) for n, s in self.search.items() if not isinstance(s, Fixed)
        }

    @model_validator(mode="after")
    def _consistent(self) -> StudyFile:
        allowed = self.task_objectives
        for name in self.study.objectives:
            if name not in allowed:
                raise ValueError(
                    f"study.objectives: unknown objective {name!r} for task "
                    f"{self.task.kind}; valid: {', '.join(allowed)}"
                )
        if self.study.directions is not None and len(self.study.directions) != len(
            self.study.objectives
        ):
            raise ValueError(
                f"study.directions has {len(self.study.directions)} entries but "
                f"study.objectives has {len(self.study.objectives)}; give one per objective"
            )
        unknown = [k for k in self.search if k not in TrialParams.model_fields]
        if unknown:
            raise ValueError(
                f"search.{unknown[0]}: not a trial parameter; valid: "
                f"{', '.join(TrialParams.model_fields)}"
            )
        for name, spec in self.search.items():
            for candidate in spec_extremes(spec):
                check_param(self.params, name, candidate)
        if self.study.start_from_params:
            self._params_in_search()
        if "lift" in self.study.objectives and not self.params.controls:
            raise ValueError(
                "study.objectives: lift is debiased minus the best control; it needs "
                'params.controls (e.g. ["random", "svd"]), which is empty'
            )
        if len(self.study.objectives) > 1 and self.sampler.name in ("cmaes",):
            raise ValueError(
                "sampler.name: cmaes supports one objective; use nsgaii, tpe or random"
            )
        return self

    @property
    def task_objectives(self) -> dict[str, Direction]:
        return dict(self.task.objectives)

    @property
    def directions(self) -> list[Direction]:
        if self.study.directions is not None:
            return list(self.study.directions)
        allowed = self.task_objectives
        return [allowed[name] for name in self.study.objectives]


def check_param(base: TrialParams, name: str, value: Any) -> TrialParams:
    """`base` with one field replaced, validated; a ValueError names the field and value."""
    try:
        return TrialParams(**{**base.model_dump(), name: value})
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(f"search.{name}: value {value!r} is invalid: {first['msg']}") from None
