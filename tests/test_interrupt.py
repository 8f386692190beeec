"""Ctrl-C in a worker: a request everywhere, an interrupt only inside `call`, never in
the middle of a storage call, and never lost (hpo.service.interrupt)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from hpo.service.interrupt import GracefulStop


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def storage_write(seconds: float, done: list[int]) -> None:
    """Stands for a storage write, Ctrl-C landing in it: its code file is under
    /optuna/storages/."""
    namespace: dict[str, Any] = {}
    source = (
        "def write(ctrl_c, busy, seconds, done):\n"
        "    ctrl_c()\n"
        "    busy(seconds)\n"
        "    done.append(1)\n"
    )
    exec(compile(source, "/site-packages/optuna/storages/_rdb/fake.py", "exec"), namespace)
    namespace["write"](ctrl_c, busy, seconds, done)


def test_outside_call_ctrl_c_is_a_request() -> None:
    with GracefulStop() as stop:
        ctrl_c()
        busy(0.2)  # no KeyboardInterrupt here: between trials, or while Optuna records one
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.call(busy, 0.1)  # the next trial does not start


def test_inside_call_ctrl_c_interrupts() -> None:
    with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):
        stop.call(lambda: (ctrl_c(), busy(5.0)))
    assert stop.requested


def test_a_storage_call_is_finished_then_interrupted() -> None:
    done: list[int] = []

    def trial() -> None:
        storage_write(0.5, done)
        busy(5.0)

    started = time.monotonic()
    with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):
        stop.call(trial)
    assert done == [1]  # the write finished
    assert time.monotonic() - started < 2.0  # delivered again right after the write


def test_an_interrupt_swallowed_by_a_finalizer_is_delivered_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    landed: list[str] = []

    class Swallows:
        def __del__(self) -> None:
            landed.append("in __del__")
            ctrl_c()  # lands here: Python would print "Exception ignored" and go on
            landed.append("not reached")

    def trial() -> None:
        obj = Swallows()
        del obj
        busy(5.0)

    started = time.monotonic()
    with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):
        stop.call(trial)
    assert landed == ["in __del__"]
    assert time.monotonic() - started < 2.0
    assert "Exception ignored" not in capsys.readouterr().err


def test_handlers_are_restored() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with GracefulStop():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_is_a_request_too() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        busy(0.1)
        assert stop.requested


def test_through_optuna_an_interrupted_trial_is_a_quiet_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import optuna

    from hpo.service.logs import ExpectedFailures
    from hpo.service.runner import _interruptible
    from hpo.storage.compat import OPTIMIZE_LOGGER

    logger = logging.getLogger(OPTIMIZE_LOGGER)
    expected = ExpectedFailures()
    logger.addHandler(caplog.handler)
    logger.addFilter(expected)
    interrupted: list[int] = []
    study = optuna.create_study()
    try:
        with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):
            objective = _interruptible(lambda t: (ctrl_c(), busy(5.0)), stop, interrupted)
            study.optimize(objective, n_trials=3)
    finally:
        logger.removeFilter(expected)
        logger.removeHandler(caplog.handler)
    (trial,) = study.trials  # the next trial did not start
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs == {"interrupted": True}
    assert interrupted == [0]
    assert [r for r in caplog.records if r.name == OPTIMIZE_LOGGER] == []
