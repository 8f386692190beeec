"""Failed trials that are expected are logged without a traceback (or not at all), once
the CLI has configured logging; importing the package configures nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hpo.errors import DivergedError
from hpo.service.logs import ExpectedFailures
from hpo.service.objective import SurplusTrial
from hpo.storage.compat import OPTIMIZE_LOGGER


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
    """caplog, fed by Optuna's logger too (which does not propagate to the root), with
    the filter the CLI installs (hpo.service.logs.configure_logging)."""
    logger = logging.getLogger(OPTIMIZE_LOGGER)
    added = caplog.handler not in logger.handlers
    if added:
        logger.addHandler(caplog.handler)
    expected = ExpectedFailures()
    logger.addFilter(expected)
    yield caplog
    logger.removeFilter(expected)
    if added:
        logger.removeHandler(caplog.handler)


def test_importing_the_package_leaves_logging_alone() -> None:
    """Only the CLI configures logging: importing every module changes no verbosity, no
    logger filter and no warnings filter; configure_logging() then does, once."""
    code = """
import logging, pkgutil, importlib, warnings
import optuna
import torch  # torch adds its own warning filters when it loads: not ours to judge
import hpo

before = (optuna.logging.get_verbosity(), list(warnings.filters))
for mod in pkgutil.walk_packages(hpo.__path__, "hpo."):
    if mod.name not in ("hpo.__main__",):
        importlib.import_module(mod.name)
logger = logging.getLogger("optuna.study._optimize")
assert (optuna.logging.get_verbosity(), list(warnings.filters)) == before, "import changed it"
assert not logger.filters, logger.filters
from hpo.service.logs import configure_logging
configure_logging()
configure_logging()
assert optuna.logging.get_verbosity() == optuna.logging.WARNING
assert len(logger.filters) == 1
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


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
    assert [r for r in records.records if r.name == OPTIMIZE_LOGGER] == []


def test_diverged_trial_is_one_line(records: pytest.LogCaptureFixture) -> None:
    log_failure(DivergedError(120, {"recon": float("nan")}))
    assert records.records and all(r.exc_info is None for r in records.records)


def test_other_failures_keep_their_traceback(records: pytest.LogCaptureFixture) -> None:
    log_failure(RuntimeError("a bug"))
    assert records.records[0].exc_info is not None


# ---- hpo launch's progress when its output is not a terminal ---------------------------


def test_a_line_per_finished_trial_each_once() -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    from hpo.service.local_workers import finished_trial_lines

    study = optuna.create_study(direction="maximize")
    reported: set[int] = set()
    assert finished_trial_lines(study, reported, 4) == []
    study.add_trial(create_trial(value=0.5, state=TrialState.COMPLETE))
    study.add_trial(create_trial(state=TrialState.PRUNED))
    assert finished_trial_lines(study, reported, 4) == [
        "trial 0 complete 0.5000; 2/4 finished, best 0.5000",
        "trial 1 pruned; 2/4 finished, best 0.5000",
    ]
    assert finished_trial_lines(study, reported, 4) == []  # each trial once
    study.add_trial(create_trial(value=0.75, state=TrialState.COMPLETE))
    assert finished_trial_lines(study, reported, 4) == [
        "trial 2 complete 0.7500; 3/4 finished, best 0.7500"
    ]


def test_launch_into_a_log_writes_trial_lines_not_a_bar(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`hpo launch ... 2> log`: no progress bar redrawn every second, a line per trial."""
    import os

    from helpers import hpo, toy_study

    path = toy_study(tmp_path, "logged", storage={"url": f"sqlite:///{tmp_path / 'l.db'}"})
    doc = path.read_text().replace("n_trials = 6", "n_trials = 3")
    path.write_text(doc)
    out = hpo("launch", str(path), "--workers", "1", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["0", "1", "2"], out.stderr
    assert "\r" not in out.stderr and "it/s" not in out.stderr and "trial/s" not in out.stderr
