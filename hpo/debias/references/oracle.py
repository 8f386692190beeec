"""The oracle reference: a ceiling, handed over by a task that can train one."""

from __future__ import annotations

from typing import ClassVar

from hpo.debias.references.base import Fitted, ReferenceSource


class Oracle:
    """The same architecture trained without the spurious correlation: a ceiling, from
    tasks that can train one (colored MNIST recolours its training images)."""

    name: ClassVar[str] = "oracle"
    description: ClassVar[str] = "the same model trained on data without the bias"

    def unavailable(self, source: ReferenceSource) -> str | None:
        return None if source.oracle is not None else "this task does not train an oracle"

    def fit(self, source: ReferenceSource) -> Fitted:
        return Fitted(model=source.oracle)
