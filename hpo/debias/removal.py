"""What an edit removes from one layer: which components, and how much of each.

A `Removal` is what every edit strategy returns and what a stored trial re-applies as it
was (never chosen or fitted again), so it is plain data with its JSON form, plus the sum
it subtracts from the weight and the words that describe it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from hpo.debias import ablation
from hpo.results import Edit
from hpo.sae.model import FaithfulSAE

MIN_FRACTION = 0.01  # a fitted removal under 1% of a component is no removal


@dataclass(frozen=True)
class Removal:
    """One layer's removal: the components, and the fraction of each (None: all of it)."""

    components: list[int]
    fractions: list[float] | None = None

    @classmethod
    def from_fractions(cls, fitted: torch.Tensor) -> Removal:
        """Fitted fractions, rounded to 3 decimals (what is recorded is what is scored);
        components under MIN_FRACTION are left whole."""
        rounded = [round(f, 3) for f in fitted.tolist()]
        keep = [i for i, f in enumerate(rounded) if f >= MIN_FRACTION]
        return cls(keep, [rounded[i] for i in keep])

    def ablated_sum(self, sae: FaithfulSAE) -> torch.Tensor:
        """Σ of the removed components, each times its fraction, (in × out)."""
        return ablation.ablated_sum(sae, self.components, self.fractions)

    def summary(self) -> str:
        """A few words: "component(s) 0, 1" or "part of 12 components"."""
        if self.fractions is None:
            return f"component(s) {', '.join(str(c) for c in self.components)}"
        return f"part of {len(self.components)} components"

    def describe(self) -> str:
        """The summary, with the largest fractions of a partial removal."""
        if self.fractions is None:
            return self.summary()
        most = sorted(zip(self.fractions, self.components, strict=True), reverse=True)
        half = [c for f, c in most if f > 0.5]
        top = ", ".join(f"{c} ({f:.2f})" for f, c in most[:5])
        return (
            f"{self.summary()} ({len(half)} by more than half; most: {top}; every fraction "
            "in `sae.pt`)"
        )

    def to_json(self) -> dict[str, Any]:
        return {"components": list(self.components), "fractions": self.fractions}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Removal:
        fractions = d.get("fractions")
        return cls(
            [int(c) for c in d["components"]], None if fractions is None else list(fractions)
        )


def recorded_fractions(removal: Mapping[str, Removal]) -> dict[str, list[float]] | None:
    """What an Edit records of a removal: the fractions per layer, None when whole
    components went in every layer."""
    if all(r.fractions is None for r in removal.values()):
        return None
    return {layer: r.fractions or [] for layer, r in removal.items()}


def recorded_removal(edit: Edit) -> dict[str, Removal]:
    """The removal an edit made, per layer: what a stored trial re-applies."""
    fractions = edit.fractions or {}
    return {layer: Removal(list(c), fractions.get(layer)) for layer, c in edit.components.items()}
