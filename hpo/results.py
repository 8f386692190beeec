"""What a trial produces, as one typed object that every consumer loops over.

`TrialResult` holds the objective values the task offers (all on validation), the
decomposition's errors, the edit (which components of which layer, at which α), the
per-model, per-split group metrics (original, debiased and the references), timings and
provenance. The CLI table, the stored user attrs, the dashboard note, the report, the
export and the model card read it; none of them asks which task produced it.
`to_json` is the stable JSON form (`hpo trial --json`, metrics files).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from hpo.plans import EditPlan, Labels

# The order in which models are shown wherever several are compared: the edit, its
# controls (the same edit of decompositions that learnt nothing), then the references.
MODEL_ORDER = (
    "original",
    "debiased",
    "control_random",
    "control_svd",
    "oracle",
    "dfr",
    "last_layer",
    "retrain_head",
    "leace",
)
SPLIT_ORDER = ("val", "test")
# The references of each label regime (which probe labels an edit's fit uses): an edit is
# compared with, and its gap closed towards, those of its own regime. The oracle (trained
# without the bias) is the ceiling where a regime has none.
REGIME_REFERENCES = {"concept": ("leace",), "group": ("dfr", "last_layer", "retrain_head")}
CEILINGS = ("oracle", "dfr", "last_layer", "retrain_head")
CONTROL_PREFIX = "control_"


def control_name(name: str) -> str:
    """How a control's edited model is named beside the references ("control_svd")."""
    return f"{CONTROL_PREFIX}{name}"


@dataclass(frozen=True)
class GroupMetrics:
    """Accuracy per group (None for a group absent from the split), its worst and mean
    over present groups, and overall accuracy."""

    worst_group: float
    mean_group: float
    overall: float
    groups: dict[str, float | None]

    @property
    def worst_groups_mean(self) -> float:
        """The mean accuracy of the worst quarter of the present groups (at least two):
        what still ranks two edits whose worst group ties, e.g. both at 0 % among 25."""
        present = sorted(a for a in self.groups.values() if a is not None)
        if not present:
            return self.worst_group
        k = min(len(present), max(2, math.ceil(len(present) / 4)))
        return float(sum(present[:k]) / k)

    def rank_key(self) -> tuple[float, float, float]:
        """How two results on one split rank: worst group, then the worst quarter's mean
        (`worst_groups_mean`), then the mean over groups."""
        return (self.worst_group, self.worst_groups_mean, self.mean_group)

    def ranked_worst_group(self, largest_group: int) -> float:
        """Worst-group accuracy with ties broken by `rank_key`, as one number: the
        tie-break adds ε·(worst quarter's mean + ε·mean group), ε = 1/(2·n²) for the
        largest group's size n, which is less than any two distinct worst-group
        accuracies on this split can differ by (1/(n_a·n_b)), so it never reorders them."""
        eps = 1.0 / (2.0 * max(largest_group, 1) ** 2)
        return self.worst_group + eps * (self.worst_groups_mean + eps * self.mean_group)

    def get(self, key: str) -> float | None:
        """A summary ("worst_group", "mean_group", "overall") or one group's accuracy."""
        if key in ("worst_group", "mean_group", "overall"):
            summary: float = getattr(self, key)
            return summary
        return self.groups.get(key)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupMetrics:
        return cls(d["worst_group"], d["mean_group"], d["overall"], dict(d["groups"]))


@dataclass(frozen=True)
class Edit:
    """The debiasing edit a trial made: its plan (hpo.plans), applied at strength α in
    every edited layer, and the validation curve α was chosen from."""

    plan: EditPlan
    alpha: float
    alpha_curve: dict[str, list[float]] = field(default_factory=dict)
    # what an in-trial edit search tried: each setting and its held-out score
    search: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layer(self) -> str:
        """The edited layer, or several joined by "+" ("fc1+fc2")."""
        return "+".join(self.plan.removal)

    @property
    def components(self) -> dict[str, list[int]]:
        """Per layer, the components the plan changes."""
        return {layer: list(r.components) for layer, r in self.plan.removal.items()}

    @property
    def fractions(self) -> dict[str, list[float]] | None:
        """Per layer, the fraction of each of its components (None: all of each)."""
        return self.plan.recorded_fractions()

    @property
    def strategy(self) -> str:
        return self.plan.strategy

    @property
    def labels(self) -> Labels:
        return self.plan.labels

    @property
    def components_removed(self) -> int:
        return self.plan.components_removed

    def to_json(self) -> dict[str, Any]:
        """Flat JSON, the names also used for a trial's stored user attrs."""
        fractions = self.fractions
        return {
            "layer": self.layer,
            "alpha": self.alpha,
            "ablated_components": self.components,
            **({} if fractions is None else {"removed_fractions": fractions}),
            "selection": self.strategy,
            "alpha_curve": self.alpha_curve,
            "labels": self.labels,
            **({"compensate_bias": True} if self.plan.compensate_bias else {}),
            **({} if self.plan.bias_shift is None else {"bias_shift": self.plan.bias_shift}),
            **({"edit_settings": self.plan.settings} if self.plan.settings else {}),
            **({"edit_search": self.search} if self.search else {}),
        }


@dataclass(frozen=True)
class Provenance:
    """What reproduces a result: the params and task as run, the SAE and task seeds, the
    data checksum, the base model's content hash, package versions, the device the SAE
    trained on and the torch threads it used."""

    params: dict[str, Any]
    task: dict[str, Any]
    seed: int
    task_seed: int
    data_sha256: str
    base_model: str
    versions: dict[str, str]
    device: str
    torch_threads: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialResult:
    task: str
    objectives: dict[str, float]  # every objective the task offers, on validation
    errors: dict[str, float]  # faithfulness_error, reconstruction_error
    models: dict[str, dict[str, GroupMetrics]] = field(default_factory=dict)
    edit: Edit | None = None
    # Each control's edit (the same procedure on a decomposition that learnt nothing); its
    # scores are models["control_<name>"].
    control_edits: dict[str, Edit] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: Provenance | None = None
    # What a study ranks by where it differs from the objective: worst-group accuracy
    # with its ties broken (GroupMetrics.ranked_worst_group); the objective itself is
    # what every table reports.
    ranked: dict[str, float] = field(default_factory=dict)

    @property
    def group_names(self) -> list[str]:
        first = next(iter(self.models.values()), {})
        metrics = next(iter(first.values()), None)
        return list(metrics.groups) if metrics else []

    def model_names(self) -> list[str]:
        known = [m for m in MODEL_ORDER if m in self.models]
        return known + [m for m in self.models if m not in known]

    def metric(self, model: str, split: str) -> GroupMetrics | None:
        return self.models.get(model, {}).get(split)

    def references_of_regime(self) -> tuple[str, ...]:
        """The references this result is compared with, of those it has: its regime's,
        else the ceilings (none where the task computed neither)."""
        regime = None if self.edit is None else self.edit.labels
        for names in (REGIME_REFERENCES.get(regime or "", ()), CEILINGS):
            if have := tuple(n for n in names if n in self.models):
                return have
        return ()

    def compare_with(self) -> str:
        """The references of `references_of_regime`, as the summary and card name them."""
        if names := self.references_of_regime():
            return ", ".join(n.replace("_", " ") for n in names)
        regime = None if self.edit is None else self.edit.labels
        wanted = REGIME_REFERENCES.get(regime or "", CEILINGS)
        return f"no reference here (name {' or '.join(wanted)} in task.references)"

    def controls(self) -> list[str]:
        return [m for m in self.model_names() if m.startswith(CONTROL_PREFIX)]

    def lift(self, split: str) -> float | None:
        """Debiased − best control, worst-group accuracy on `split`: what training the
        decomposition added to the same edit procedure (None without controls)."""
        debiased = self.metric("debiased", split)
        controls = [m.worst_group for c in self.controls() if (m := self.metric(c, split))]
        if debiased is None or not controls:
            return None
        return debiased.worst_group - max(controls)

    def gap_closed(self, split: str) -> tuple[float, str] | None:
        """(debiased − original) / (best reference − original) in worst-group accuracy on
        `split`, and the name of that best reference (of the edit's label regime, else the
        oracle and the retrained heads); None without a debiased model or any."""
        original, debiased = self.metric("original", split), self.metric("debiased", split)
        ceilings = [
            (m.worst_group, name)
            for name in self.references_of_regime()
            if (m := self.metric(name, split))
        ]
        if original is None or debiased is None or not ceilings:
            return None
        best, name = max(ceilings)
        gap = best - original.worst_group
        if gap <= 0:
            return None
        return (debiased.worst_group - original.worst_group) / gap, name

    def values(self) -> dict[str, float]:
        """Every objective and error, by name (all on validation)."""
        return {**self.objectives, **self.errors}

    def value(self, name: str) -> float:
        """An objective or an error by name (what every table reports)."""
        if name in self.objectives:
            return self.objectives[name]
        return self.errors[name]

    def ranked_value(self, name: str) -> float:
        """What a study ranks trials by: the objective, ties broken where it has a rule."""
        return self.ranked.get(name, self.value(name))

    def to_json(self) -> dict[str, Any]:
        """Flat JSON: objectives and errors at top level, then the edit, models, provenance."""
        out: dict[str, Any] = {"task_kind": self.task, **self.values()}
        if self.edit is not None:
            out.update(self.edit.to_json())
        if self.models:
            out["models"] = {
                m: {s: asdict(v) for s, v in splits.items()} for m, splits in self.models.items()
            }
            gaps = {s: g for s in SPLIT_ORDER if (g := self.gap_closed(s)) is not None}
            if gaps:
                out["gap_closed"] = {
                    s: {"fraction": g[0], "towards": g[1]} for s, g in gaps.items()
                }
            lifts = {s: x for s in SPLIT_ORDER if (x := self.lift(s)) is not None}
            if lifts:
                out["lift_by_split"] = lifts
        if self.control_edits:
            out["controls"] = {
                name: {
                    "alpha": e.alpha,
                    "components_removed": e.components_removed,
                    "ablated_components": {k: list(v) for k, v in e.components.items()},
                }
                for name, e in self.control_edits.items()
            }
        out["timings"] = dict(self.timings)
        if self.provenance is not None:
            out.update(self.provenance.to_json())
        return out
