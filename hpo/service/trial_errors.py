"""Trials that raise: stored as FAIL with their error, and the worker goes on, unless
they fail `study.max_failed_in_a_row` times in a row (a task that fails every trial is
reported, not retried for ever). Optuna stores a trial whose objective raised as FAIL and
logs its traceback; the worker catches every Exception (KeyboardInterrupt is not one)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import optuna

from hpo.errors import DivergedError, one_line
from hpo.service.objective import SurplusTrial
from hpo.storage.attrs import ERROR_ATTR


def recording_errors(
    objective: Callable[[optuna.Trial], Any], errors: list[str]
) -> Callable[[optuna.Trial], Any]:
    """The objective, whose unexpected errors (not a divergence, a prune, the budget's
    surplus or Ctrl-C) are stored in the trial's "error" user attr and appended to
    `errors` before Optuna stores the trial as FAIL."""

    def run(trial: optuna.Trial) -> Any:
        try:
            return objective(trial)
        except (DivergedError, SurplusTrial, optuna.TrialPruned):
            raise
        except Exception as err:
            message = one_line(err)
            trial.set_user_attr(ERROR_ATTR, message)
            errors.append(f"trial {trial.number}: {message}")
            raise

    return run


def stop_on_errors(worker: str, failed: list[str]) -> int:
    """Say why the worker stops (the trials that failed in a row, each in one line) and
    give its exit code."""
    lines = "".join(f"  {line}\n" for line in failed)
    sys.stderr.write(
        f"\nworker {worker} stopped: {len(failed)} trials in a row raised an error "
        "(study.max_failed_in_a_row; each is stored as FAIL, outside the budget, with its "
        "error in the trial's 'error' user attr and its traceback above):\n"
        f"{lines}fix the cause and run the same command again to resume the study\n"
    )
    return 1
