"""The search space's grammar: what a `[search]` entry may be (a float or int range, a
choice, a fixed value), strict like the rest of the study file (hpo.config)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from hpo.strict import Strict


class FloatRange(Strict):
    low: float  # finite: an infinite bound is an error here, not a crashed worker later
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low = {self.low}")
        return self


class IntRange(Strict):
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low = {self.low}")
        if self.log and self.step != 1:
            raise ValueError("an int range cannot have both log = true and step > 1")
        if (self.high - self.low) % self.step:
            top = self.low + (self.high - self.low) // self.step * self.step
            raise ValueError(
                f"step ({self.step}) does not divide high - low ({self.high - self.low}); "
                f"Optuna would silently stop at {top}: use high = {top} or "
                f"{top + self.step}"
            )
        return self


class Choice(Strict):
    choices: tuple[Any, ...] = Field(min_length=1)


class Fixed(Strict):
    value: Any


def _spec_kind(value: Any) -> str:
    """Pick the spec type from the keys present, so errors name one kind, not four."""
    if isinstance(value, BaseModel):
        return type(value).__name__.lower()
    if "choices" in value:
        return "choice"
    if "value" in value:
        return "fixed"
    ints = all(type(value.get(k)) is int for k in ("low", "high"))
    return "intrange" if ints else "floatrange"


SearchSpec = Annotated[
    Annotated[FloatRange, Tag("floatrange")]
    | Annotated[IntRange, Tag("intrange")]
    | Annotated[Choice, Tag("choice")]
    | Annotated[Fixed, Tag("fixed")],
    Discriminator(_spec_kind),
]


def spec_extremes(spec: SearchSpec) -> list[Any]:
    """The values a spec can reach at its edges: enough to type-check it against a field."""
    if isinstance(spec, (FloatRange, IntRange)):
        return [spec.low, spec.high]
    if isinstance(spec, Choice):
        return list(spec.choices)
    return [spec.value]


def spec_contains(spec: SearchSpec, value: Any) -> bool:
    """Whether a trial may sample `value` from `spec` (a range's bounds included)."""
    if isinstance(spec, FloatRange):
        return isinstance(value, (int, float)) and spec.low <= value <= spec.high
    if isinstance(spec, IntRange):
        return (
            isinstance(value, int)
            and spec.low <= value <= spec.high
            and (spec.log or (value - spec.low) % spec.step == 0)
        )
    if isinstance(spec, Choice):
        # 1 == 1.0 is the same sample; True == 1 is not
        return any(
            c == value and isinstance(c, bool) == isinstance(value, bool) for c in spec.choices
        )
    return True  # fixed: the trial takes the spec's value, whatever [params] says


def spec_describe(spec: SearchSpec) -> str:
    """What a spec allows, in a few words for an error."""
    if isinstance(spec, (FloatRange, IntRange)):
        return f"{spec.low} … {spec.high}"
    if isinstance(spec, Choice):
        return ", ".join(repr(c) for c in spec.choices)
    return repr(spec.value)
