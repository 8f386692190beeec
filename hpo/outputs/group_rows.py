"""Which groups a table, note or figure lists: every one up to `MAX_LISTED`, else the
worst few, with the rest summarised.

A benchmark with 5 classes × 5 spurious values has 25 groups, CivilComments-style
identity groups more: a table of every group per model and split is then a wall of
numbers. Past `MAX_LISTED` groups every output lists the `WORST_LISTED` groups with the
lowest accuracy of any model it compares (validation, so the choice never peeks at
test), worst first, and one line for the others: how many, their lowest and median.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MAX_LISTED = 12  # every group is listed up to this many
WORST_LISTED = 8  # beyond it, the worst ones

Accuracies = Mapping[str, float | None]  # group name -> accuracy (None: not in the split)


@dataclass(frozen=True)
class GroupSelection:
    """The groups to list, in order, and the groups summarised instead."""

    listed: tuple[str, ...]
    rest: tuple[str, ...]

    @property
    def title_note(self) -> str:
        """How a figure's title says it shows only some groups ("" when it shows all)."""
        n = len(self.listed) + len(self.rest)
        return f" (the {len(self.listed)} worst of {n} groups)" if self.rest else ""

    def rest_rows(self) -> list[tuple[str, str]]:
        """(label, statistic) rows that summarise the groups not listed: their lowest and
        their median accuracy ("min"/"median", see `summarise`)."""
        if not self.rest:
            return []
        n = len(self.rest)
        return [(f"{n} other groups: lowest", "min"), (f"{n} other groups: median", "median")]

    def summarise(self, accuracies: Accuracies, statistic: str) -> float | None:
        values = [v for g in self.rest if (v := accuracies.get(g)) is not None]
        if not values:
            return None
        return min(values) if statistic == "min" else float(statistics.median(values))


def select_groups(names: Sequence[str], compared: Iterable[Accuracies]) -> GroupSelection:
    """All of `names` in their order, or past MAX_LISTED the WORST_LISTED whose lowest
    accuracy over the `compared` models (validation) is lowest, worst first."""
    names = list(names)
    if len(names) <= MAX_LISTED:
        return GroupSelection(tuple(names), ())
    columns = list(compared)

    def lowest(group: str) -> float:
        values = [v for c in columns if (v := c.get(group)) is not None]
        return min(values) if values else float("inf")

    worst = sorted(names, key=lambda g: (lowest(g), names.index(g)))[:WORST_LISTED]
    return GroupSelection(tuple(worst), tuple(g for g in names if g not in worst))
