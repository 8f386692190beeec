"""The schema of a study file: the one source of truth for every default.

The CLI, the tests and the README never repeat a default; they read it from here (and
from hpo.params, the `[params]` section by role, which this module re-exports).
Every model is frozen and forbids unknown keys, so that a typo in a study file is an
error naming the key instead of a silently ignored setting. Types are strict: TOML says
what a value is, so `n_trials = "2"` is an error, not a 2 (an int is still a fine float),
and no float may be infinite or NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from hpo.params import (
    MAX_SEED,
    AlphaGrid,
    EditConfig,
    EditSearch,
    FitBias,
    LossWeights,
    SAEConfig,
    TrialParams,
)
from hpo.search_spec import Fixed, SearchSpec, spec_contains, spec_describe, spec_extremes
from hpo.strict import Strict

__all__ = [  # the [params] roles, re-exported: the schema is one import away
    "AlphaGrid",
    "EditConfig",
    "EditSearch",
    "FitBias",
    "LossWeights",
    "SAEConfig",
    "TrialParams",
]

Direction = Literal["maximize", "minimize"]


class TaskConfig(Strict):
    """Base of every `[task]` section: strict (as the whole study file), frozen, seeded.

    Each task kind subclasses it with its own fields and says which objectives its
    results offer; the study file is checked against those, so this module never asks
    the task registry (hpo.tasks) anything.
    """

    kind: str
    seed: int = Field(0, ge=0, le=MAX_SEED)
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
    # A trial that raises (a bug in a task, memory run out on one configuration) is
    # stored as FAIL with its error in the "error" user attr, outside the budget, and the
    # worker goes on; after this many such trials in a row it stops with exit code 1
    # (a task that fails every trial is reported, not retried for ever).
    max_failed_in_a_row: int = Field(3, ge=1)


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
        unknown = [
            k for k in self.search if k not in TrialParams.model_fields or k == "edit_search"
        ]
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
