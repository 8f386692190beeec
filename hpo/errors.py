"""Errors meant for people, not for debuggers.

The CLI prints a `UserError` as one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a file, a field, a value, or an environment the user can fix."""


class DivergedError(Exception):
    """Training produced a non-finite loss; the trial is recorded as such."""

    def __init__(self, step: int, losses: dict[str, float]) -> None:
        bad = ", ".join(f"{k}={v}" for k, v in losses.items())
        super().__init__(f"loss became non-finite at step {step} ({bad})")
        self.step = step
        self.losses = losses


class NonFiniteObjective(DivergedError):
    """The trial trained, but what it is ranked by came out non-finite (a score of a
    diverged edit, a task's metric over an empty group): recorded as diverged."""

    def __init__(self, values: dict[str, float]) -> None:
        bad = ", ".join(f"{k}={v}" for k, v in values.items())
        Exception.__init__(self, f"the objective is not finite ({bad})")
        self.step = -1  # after training: no step of it
        self.losses = {}


def one_line(err: BaseException) -> str:
    """An exception as one line of at most 300 characters: its type and first line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]
