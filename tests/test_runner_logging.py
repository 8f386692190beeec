"""Failed trials that are expected are logged without a traceback (or not at all)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

import hpo.service.runner  # noqa: F401  (installs the filter)
from hpo.errors import DivergedError
from hpo.service.objective import SurplusTrial

OPTIMIZE_LOGGER = "optuna.study._optimize"


def log_failure(err: Exception) -> None:
    """What Optuna's _log_failed_trial logs for a failed trial: two lines."""
    logger = logging.getLogger(OPTIMIZE_LOGGER)
    try:
        raise err
    except Exception:
        logger.warning(
            "Trial 3 failed with parameters: {} because of the following error: %r.",
            err,
            exc_info=sys.exc_info(),
        )
    logger.warning("Trial 3 failed with value None.")


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog, fed by Optuna's logger too (which does not propagate to the root)."""
    logger = logging.getLogger(OPTIMIZE_LOGGER)
    added = caplog.handler not in logger.handlers
    if added:
        logger.addHandler(caplog.handler)
    yield caplog
    if added:
        logger.removeHandler(caplog.handler)


def test_surplus_trial_is_not_logged(records: pytest.LogCaptureFixture) -> None:
    log_failure(SurplusTrial("trial 3: budget of 2 already taken"))
    assert records.records == []


def test_through_optuna_a_surplus_trial_leaves_no_log_line(
    records: pytest.LogCaptureFixture,
) -> None:
    import optuna

    def objective(trial: optuna.Trial) -> float:
        raise SurplusTrial(f"trial {trial.number}: budget of 0 already taken")

    study = optuna.create_study()
    study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert records.records == []


def test_diverged_trial_is_one_line(records: pytest.LogCaptureFixture) -> None:
    log_failure(DivergedError(120, {"recon": float("nan")}))
    assert records.records and all(r.exc_info is None for r in records.records)


def test_other_failures_keep_their_traceback(records: pytest.LogCaptureFixture) -> None:
    log_failure(RuntimeError("a bug"))
    assert records.records[0].exc_info is not None
