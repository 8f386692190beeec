"""A trial that raises is recorded and the study goes on; a task that fails every trial
stops its worker with a message, not a loop. The failing task is a real extension: a
task kind registered through the public registry (as a program would) whose scoring
raises for some of the configurations the sampler proposes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import helpers
import optuna
import pytest

from hpo.cli import main
from hpo.service.runner import work
from hpo.storage.engine import open_storage
from hpo.tasks.registry import TASKS, register_task
from hpo.tasks.toy import ToySuperposition, ToyTask

pytestmark = pytest.mark.slow
TS = optuna.trial.TrialState


class FlakyToyTask(ToyTask):
    kind: Literal["toy_flaky"] = "toy_flaky"  # type: ignore[assignment]


# The bug: scoring raises for a trial whose lr is above this (a test sets it, and then
# "fixes the code" by raising it).
FAIL_ABOVE_LR = 1.0
NAN_ABOVE_LR = 1.0  # and its score is NaN above this


@dataclass
class FlakyToy(ToySuperposition):
    """The toy task, whose scoring fails as a task with a bug would: for some trials."""

    kind: ClassVar[str] = "toy_flaky"
    config: ClassVar[type[ToyTask]] = FlakyToyTask

    def evaluate(self, ctx: Any, saes: Any, params: Any, **kw: Any) -> Any:
        if params.lr > FAIL_ABOVE_LR:
            raise RuntimeError(f"scoring broke at lr {params.lr:.4g}\nsecond line")
        result = super().evaluate(ctx, saes, params, **kw)
        if params.lr > NAN_ABOVE_LR:
            nan = {k: math.nan for k in result.objectives}
            result = replace(result, objectives=nan, ranked={k: math.nan for k in result.ranked})
        return result


@pytest.fixture(autouse=True)
def flaky_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kind registered for these tests only (the others see the built-in ones)."""
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    register_task(FlakyToy())
    yield
    TASKS.unregister(FlakyToy.kind)


def flaky_study(tmp: Path, n_trials: int) -> str:
    url = f"sqlite:///{tmp / 'storage' / 'flaky.db'}"
    path = helpers.toy_study(
        tmp,
        "flaky",
        storage={"url": url},
        task={"kind": "toy_flaky", "train_steps": 300, "n_samples": 2000},
        study__n_trials=n_trials,
        sampler={"name": "random", "seed": 3},
    )
    assert main(["launch", str(path), "--workers", "0"]) == 0
    return url


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(url, heartbeat=False)
    return optuna.load_study(study_name="flaky", storage=storage).get_trials()


def test_a_trial_that_raises_is_stored_with_its_error_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lr is sampled log-uniformly in [1e-3, 1e-2]: about a third of the trials fail
    monkeypatch.setattr(__name__ + ".FAIL_ABOVE_LR", 4.6e-3)
    url = flaky_study(tmp_path, n_trials=6)
    assert work("flaky", url, worker="w", threads=1) == 0

    done = trials(url)
    complete = [t for t in done if t.state == TS.COMPLETE]
    failed = [t for t in done if t.state == TS.FAIL]
    assert len(complete) == 6, "the budget counts results: failed trials are outside it"
    assert failed, "the seed-3 random sampler proposes lr above the limit; none failed"
    for t in failed:
        assert t.params["lr"] > 4.6e-3
        assert t.user_attrs["error"] == f"RuntimeError: scoring broke at lr {t.params['lr']:.4g}"
    assert all(t.params["lr"] <= 4.6e-3 for t in complete)


def test_a_task_that_fails_every_trial_stops_its_worker_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(__name__ + ".FAIL_ABOVE_LR", 0.0)
    url = flaky_study(tmp_path, n_trials=6)
    assert work("flaky", url, worker="w", threads=1) == 1

    done = trials(url)
    assert [t.state for t in done] == [TS.FAIL] * 3  # study.max_failed_in_a_row
    err = capsys.readouterr().err
    assert "worker w stopped: 3 trials in a row raised an error" in err
    for t in done:
        assert f"trial {t.number}: RuntimeError: scoring broke at lr" in err
    assert "run the same command again to resume" in err

    # the bug fixed, the same study resumes and finishes its budget
    monkeypatch.setattr(__name__ + ".FAIL_ABOVE_LR", 1.0)
    assert work("flaky", url, worker="w", threads=1) == 0
    assert len([t for t in trials(url) if t.state == TS.COMPLETE]) == 6


def test_a_trial_scored_nan_is_recorded_as_diverged_and_counts_toward_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna stores a NaN objective as FAIL by itself, outside the budget: a task that
    scores NaN every trial would have kept its worker sampling for ever."""
    monkeypatch.setattr(__name__ + ".NAN_ABOVE_LR", 0.0)
    url = flaky_study(tmp_path, n_trials=3)
    assert work("flaky", url, worker="w", threads=1) == 0

    done = trials(url)
    assert [t.state for t in done] == [TS.FAIL] * 3
    for t in done:
        assert t.user_attrs["diverged"].startswith("the objective is not finite (mmcs=nan")
