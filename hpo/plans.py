"""What an edit changes, as plain data: chosen once, then replayed as it is.

An `EditPlan` is what the edit procedure (hpo.debias.edit) decides and what a stored
trial, its rescoring and its export re-apply without choosing or fitting again: per
edited layer a `Removal` (which components, and the fraction of each), whether each
bias keeps the removed part's mean, and how the plan was chosen (the strategy and the
labels its choice saw). It is data with a JSON form and the words that describe it;
applying it to a weight is hpo.debias's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Which probe labels an edit's choice used: the spurious attribute only (as SCAR or
# LEACE), or attribute and class (as DFR).
Labels = Literal["concept", "group"]
LABELS: tuple[Labels, ...] = ("concept", "group")

MIN_FRACTION = 0.01  # a fitted fraction under 1 % of a component (either sign) is none


@dataclass(frozen=True)
class Removal:
    """One layer's edit: the components, the fraction of each removed (None: all of it;
    a negative fraction amplifies its component instead), and a fitted move of the
    layer's bias (None: none beyond `EditPlan.compensate_bias`)."""

    components: list[int]
    fractions: list[float] | None = None
    bias_shift: list[float] | None = None

    @classmethod
    def from_fractions(
        cls,
        fitted: Sequence[float],
        *,
        keep_all: bool = False,
        bias_shift: Sequence[float] | None = None,
    ) -> Removal:
        """Fitted fractions, rounded to 3 decimals (what is recorded is what is scored);
        components under MIN_FRACTION either way are left as they are, unless `keep_all`
        (a component the bias moves along is edited whatever its fraction)."""
        rounded = [round(float(f), 3) for f in fitted]
        keep = [i for i, f in enumerate(rounded) if keep_all or abs(f) >= MIN_FRACTION]
        shift = None if bias_shift is None else [float(b) for b in bias_shift]
        return cls(keep, [rounded[i] for i in keep], shift)

    def summary(self) -> str:
        """A few words: "component(s) 0, 1" or "part of 12 components"."""
        if self.fractions is None:
            return f"component(s) {', '.join(str(c) for c in self.components)}"
        return f"part of {len(self.components)} components"

    def describe(self) -> str:
        """The summary, with the largest fractions of a partial removal."""
        if self.fractions is None:
            return self.summary()
        most = sorted(zip(self.fractions, self.components, strict=True), key=_size, reverse=True)
        half = [c for f, c in most if f > 0.5]
        amplified = [c for f, c in most if f < 0]
        top = ", ".join(f"{c} ({f:.2f})" for f, c in most[:5])
        more = f"{len(amplified)} amplified; " if amplified else ""
        return (
            f"{self.summary()} ({len(half)} by more than half; {more}most: {top}; every "
            "fraction in `sae.pt`)"
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"components": list(self.components), "fractions": self.fractions}
        if self.bias_shift is not None:
            out["bias_shift"] = list(self.bias_shift)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Removal:
        fractions, shift = d.get("fractions"), d.get("bias_shift")
        return cls(
            [int(c) for c in d["components"]],
            None if fractions is None else [float(f) for f in fractions],
            None if shift is None else [float(b) for b in shift],
        )


def _size(item: tuple[float, int]) -> tuple[float, int]:
    """(|fraction|, component): sorted in reverse, the largest removal first."""
    return (abs(item[0]), item[1])


@dataclass(frozen=True)
class EditPlan:
    """What an edit changes in each edited layer, before α scales it.

    `removal`: per layer (in call order), the components, their fractions and the
    layer's fitted bias move (scaled by α like the rest).
    `compensate_bias`: each bias keeps the removed part's mean contribution on probe.
    `strategy` and `labels`: how it was chosen, and from which probe labels.
    `settings`: the edit settings an in-trial search chose (empty without one).
    """

    removal: dict[str, Removal]
    strategy: str
    labels: Labels
    compensate_bias: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def bias_shift(self) -> dict[str, list[float]] | None:
        """Per layer whose bias the plan moves, the move (None: no layer's)."""
        shifts = {k: r.bias_shift for k, r in self.removal.items() if r.bias_shift is not None}
        return shifts or None

    @property
    def layers(self) -> list[str]:
        return list(self.removal)

    @property
    def components_removed(self) -> int:
        return sum(len(r.components) for r in self.removal.values())

    def recorded_fractions(self) -> dict[str, list[float]] | None:
        """The fractions per layer, None when whole components went in every layer."""
        if all(r.fractions is None for r in self.removal.values()):
            return None
        return {layer: r.fractions or [] for layer, r in self.removal.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "removal": {layer: r.to_json() for layer, r in self.removal.items()},
            "strategy": self.strategy,
            "labels": self.labels,
            "compensate_bias": self.compensate_bias,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EditPlan:
        labels = d["labels"]
        if labels not in LABELS:
            raise ValueError(f"edit plan: labels {labels!r}; valid: {', '.join(LABELS)}")
        return cls(
            removal={layer: Removal.from_json(r) for layer, r in d["removal"].items()},
            strategy=str(d["strategy"]),
            labels=labels,
            compensate_bias=bool(d.get("compensate_bias", False)),
            settings=dict(d.get("settings", {})),
        )
