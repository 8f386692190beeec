"""An enqueued trial goes to one worker only, on the embedded SQLite storage too.

Optuna hands a queued trial (`enqueue_trial`, as `start_from_params` does) to the first
worker whose compare-and-set moves it from WAITING to RUNNING. SQLite ignores Optuna's
SELECT ... FOR UPDATE and Python's sqlite3 starts its transaction only at the UPDATE, so
two workers could both read WAITING and both run the trial; the second then failed with
"Cannot tell a COMPLETE trial". The storage's transactions now take SQLite's write lock
when they begin, so the read and the write are one step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna

from hpo.storage.engine import open_storage

WORKER = """
import json, sys, time
import optuna
from hpo.storage.engine import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, start, asks = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
study = optuna.load_study(study_name="queue", storage=open_storage(url, heartbeat=False))
time.sleep(max(0.0, start - time.time()))
taken = []
for _ in range(asks):
    trial = study.ask()
    taken.append(trial.number)
    study.tell(trial, 0.0)
print(json.dumps(taken))
"""


def test_each_queued_trial_is_taken_by_one_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(url, heartbeat=False))
    workers, asks = 4, 8
    for i in range(workers * asks):
        study.enqueue_trial({"x": float(i)})
    start = time.time() + 3.0  # every worker imported and connected before the first ask
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(start), str(asks)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    taken = [n for p in procs for n in json.loads(p.communicate(timeout=120)[0])]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(taken) == list(range(workers * asks))  # no trial twice, none left out
    trials = optuna.load_study(study_name="queue", storage=url).trials
    assert len(trials) == workers * asks
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
