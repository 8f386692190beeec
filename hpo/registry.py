"""One shape for every extension point: a named table with one error message.

Tasks, edit strategies, references, controls, samplers, pruners and losses are each a
`Registry` of plug-ins: `register` adds one, `get` finds one by the name a study file
gives (or says, in one line, which names are valid), `names` lists them. A plug-in says
what it can do through its own attributes (a sampler's `multi_objective`, a strategy's
`labels`), never through a rule kept elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name no plug-in of a registry has; the message lists the valid ones."""


class Registry(Generic[T]):
    """Plug-ins of one kind by name, in the order they were registered."""

    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "edit strategy": how the error names the kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Take a plug-in out again (a test's, a session's); the one it was is returned."""
        return self._items.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The one message for a name that is not here."""
        return f"unknown {self.what} {name!r}; valid: {', '.join(self._items)}"

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def values(self) -> Iterator[T]:
        return iter(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
