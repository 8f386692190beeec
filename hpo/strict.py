"""The base of every schema model: frozen, no unknown keys, strict types, finite floats.

TOML says what a value is, so `n_trials = "2"` is an error, not a 2 (an int is still a
fine float); an unknown key is an error naming it, never a silently ignored setting.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _is_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(annotation))
    return False


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


class Strict(BaseModel):
    """Frozen, no unknown keys, strict types, finite floats."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _arrays_are_tuples(cls, data: Any) -> Any:
        """TOML and JSON arrays arrive as lists; strict tuple fields take them as tuples."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            k: _as_tuples(v) if k in fields and _is_tuple(fields[k].annotation) else v
            for k, v in data.items()
        }
