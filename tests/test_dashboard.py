"""`hpo dashboard` over a tiny study: real server processes, real HTTP, real Chromium.

What a user relies on: each trial carries its charts and the best one a note saying what
was ablated and what it gained; browsing works in `--read-only` mode while every request
that would change a study is refused; and the page renders the study and its trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from helpers import run_tiny_study

from hpo.outputs.charts import ALPHA_CHART, GROUP_CHART, LOSS_CHART
from hpo.outputs.notes import sync_best_notes
from hpo.storage import compat

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_mnist_dir: Path) -> str:
    return run_tiny_study(tmp_path_factory.mktemp("dashboard"), tiny_mnist_dir, "tiny")


@contextlib.contextmanager
def dashboard(*args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`hpo dashboard ARGS --port 0` in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                break
        assert line.startswith("optuna-dashboard on http://"), (
            line,
            proc.stderr.read() if proc.poll() is not None else "",
        )
        url = line.split()[2].removesuffix("/dashboard/")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    attrs = compat.storage_of(study).get_study_system_attrs(compat.study_id(study))
    return compat.get_note(attrs, compat.trial_id(trial))["body"]


@pytest.mark.slow
def test_trials_carry_their_charts_and_the_best_one_a_note(tiny: str) -> None:
    from optuna.artifacts import get_all_artifact_meta

    study = optuna.load_study(study_name="tiny", storage=tiny)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:
        metas = {
            m.filename: m for m in get_all_artifact_meta(trial, storage=compat.storage_of(study))
        }
        assert {ALPHA_CHART, GROUP_CHART, LOSS_CHART} <= set(metas), trial.number
        assert metas[ALPHA_CHART].mimetype == "image/svg+xml"
    best = study.best_trial
    text = note(study, best)
    assert text.startswith("### ★ Best trial (worst_group = ")
    assert "**Removed** Faithful-SAE component(s) **0, 1** of the `fc1` weight" in text
    assert f"α = {best.user_attrs['alpha']:.2f}" in text
    assert "| **worst group** |" in text and "red/0-4" in text
    for trial in complete:
        if trial.number != best.number:  # never noted, or noted when it led
            assert note(study, trial) == "" or note(study, trial).startswith(
                "### Was best until trial "
            )


def _attrs(worst: float) -> dict:
    return {
        "alpha": 0.5,
        "ablated_components": [0, 1],
        "seed": 0,
        "val_groups": {"original": {"a": 0.9, "b": 0.1}, "debiased": {"a": 0.85, "b": worst}},
    }


def test_best_note_follows_the_best_and_leaves_a_persons_note_alone() -> None:
    from optuna_dashboard import save_note

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(
        "study_file",
        {
            "study": {"objectives": ["worst_group"]},
            "task": {"layer": "fc1", "colors": ["red", "green"]},
        },
    )

    def finish(worst: float) -> optuna.trial.FrozenTrial:
        trial = study.ask()
        for key, value in _attrs(worst).items():
            trial.set_user_attr(key, value)
        study.tell(trial, worst)
        sync_best_notes(study)
        return study.trials[-1]

    first = finish(0.4)
    assert note(study, first).startswith("### ★ Best trial (worst_group = 0.4)")
    assert "+30.0 pts" in note(study, first)  # worst group 10% -> 40%
    second = finish(0.6)
    assert note(study, second).startswith("### ★ Best trial (worst_group = 0.6)")
    assert note(study, first).startswith("### Was best until trial 1 (worst_group = 0.4)")

    live = study.ask()  # a person writes a note on a trial that then becomes best
    save_note(live, "my own words")
    for key, value in _attrs(0.8).items():
        live.set_user_attr(key, value)
    study.tell(live, 0.8)
    sync_best_notes(study)
    assert note(study, study.trials[-1]) == "my own words"
    assert note(study, second).startswith("### Was best until trial 2")
    assert sync_best_notes(study) == []  # idempotent


def test_an_infeasible_trial_never_gets_the_best_note() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("study_file", {"study": {"objectives": ["worst_group"]}})
    for worst, faithfulness in ((0.5, 0.01), (0.9, 0.8)):  # the better one is unfaithful
        trial = study.ask()
        for key, value in _attrs(worst).items():
            trial.set_user_attr(key, value)
        trial.set_constraint("faithfulness_error", faithfulness - 0.1)
        study.tell(trial, worst)
    sync_best_notes(study)
    assert note(study, study.trials[0]).startswith("### ★ Best trial (worst_group = 0.5)")
    assert not note(study, study.trials[1])
    assert study.best_trial.number == 0  # Optuna agrees: the best feasible trial


def test_pareto_notes_mark_the_front_and_trials_that_leave_it() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("study_file", {"study": {"objectives": ["worst_group", "faith"]}})
    for values in [(0.4, 0.1), (0.6, 0.3)]:
        study.tell(study.ask(), values)
        sync_best_notes(study)
    first, second = study.trials
    assert note(study, first).startswith("### ★ On the Pareto front (worst_group = 0.4, ")
    assert note(study, second).startswith("### ★ On the Pareto front (worst_group = 0.6, ")
    study.tell(study.ask(), (0.5, 0.05))  # dominates the first trial, not the second
    sync_best_notes(study)
    assert note(study, first).startswith("### Left the Pareto front (worst_group = 0.4, ")
    assert note(study, second).startswith("### ★ On the Pareto front")
    assert note(study, study.trials[-1]).startswith("### ★ On the Pareto front")


@pytest.mark.slow
def test_read_only_dashboard_refuses_every_change_and_browsing_still_works(tiny: str) -> None:
    study = optuna.load_study(study_name="tiny", storage=tiny)
    trial = study.best_trial
    tid = compat.trial_id(trial)
    from optuna.artifacts import get_all_artifact_meta

    chart = next(
        m
        for m in get_all_artifact_meta(trial, storage=compat.storage_of(study))
        if m.filename == GROUP_CHART
    )
    with dashboard("--storage", tiny, "--read-only") as (base, _):
        code, body, _ = request("GET", f"{base}/api/studies")
        assert code == 200
        (summary,) = json.loads(body)["study_summaries"]
        assert summary["study_name"] == "tiny"
        sid = summary["study_id"]
        code, body, _ = request("GET", f"{base}/api/studies/{sid}")
        assert code == 200 and len(json.loads(body)["trials"]) == 3
        code, body, _ = request("GET", f"{base}/dashboard/studies/{sid}")
        assert code == 200 and b"Optuna Dashboard" in body
        assert request("GET", f"{base}/static/bundle.js")[0] == 200
        code, body, headers = request("GET", f"{base}/artifacts/{sid}/{tid}/{chart.artifact_id}")
        assert code == 200 and headers["Content-Type"] == "image/svg+xml"
        ET.fromstring(body)  # well-formed SVG
        assert request("HEAD", f"{base}/api/meta")[0] == 200
        assert request("GET", f"{base}/csv/{sid}")[0] == 200

        refused = [
            ("DELETE", f"/api/studies/{sid}", None),
            ("POST", "/api/studies", b'{"study_name": "new", "directions": ["minimize"]}'),
            ("POST", f"/api/studies/{sid}/rename", b'{"study_name": "renamed"}'),
            ("PUT", f"/api/studies/{sid}/note", b'{"version": 1, "body": "x"}'),
            ("PUT", f"/api/studies/{sid}/{tid}/note", b'{"version": 9, "body": "x"}'),
            ("POST", f"/api/trials/{tid}/user-attrs", b'{"user_attrs": {"a": 1}}'),
            ("DELETE", f"/api/artifacts/{sid}/{tid}/{chart.artifact_id}", None),
            ("PATCH", f"/api/studies/{sid}", b"{}"),
            ("POST", "/incompatible-rdb-schema", None),
        ]
        for method, path, body in refused:
            code, text, _ = request(method, base + path, body)
            assert code == 403, (method, path, code)
            assert json.loads(text)["reason"].startswith(f"read-only dashboard: {method}")
    after = optuna.load_study(study_name="tiny", storage=tiny)
    assert optuna.study.get_all_study_names(tiny) == ["tiny"]
    assert len(after.trials) == 3 and "a" not in after.best_trial.user_attrs
    assert GROUP_CHART in {
        m.filename
        for m in get_all_artifact_meta(after.best_trial, storage=compat.storage_of(after))
    }


@pytest.mark.slow
def test_without_read_only_a_delete_goes_through_and_other_hosts_get_a_warning(
    tiny: str, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.db"
    with sqlite3.connect(tiny.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    db = Path(tiny.removeprefix("sqlite:///"))
    shutil.copytree(db.parent / "artifacts" / db.stem, tmp_path / "artifacts" / "copy")
    url = f"sqlite:///{copy}"
    with dashboard("--storage", url, "--host", "0.0.0.0") as (base, proc):
        local = base.replace("0.0.0.0", "127.0.0.1")
        (summary,) = json.loads(request("GET", f"{local}/api/studies")[1])["study_summaries"]
        code, _, _ = request("DELETE", f"{local}/api/studies/{summary['study_id']}")
        assert code in (200, 204)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "warning: binding to 0.0.0.0: the dashboard has no authentication" in err
    assert optuna.study.get_all_study_names(url) == []
    assert not list((tmp_path / "artifacts" / "copy").iterdir())  # weights and charts gone too


@pytest.mark.browser
def test_chromium_renders_the_study_and_its_trials(tiny: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing; CI installs it (apt-get install chromium)")
    study = optuna.load_study(study_name="tiny", storage=tiny)
    sid = compat.study_id(study)
    with dashboard("--storage", tiny, "--read-only") as (base, _):
        best = study.best_trial.number
        pages = {
            "study": f"{base}/dashboard/studies/{sid}",
            "trials": f"{base}/dashboard/studies/{sid}/trials?numbers={best}",
        }
        doms = {}
        for name, url in pages.items():
            shot = tmp_path / f"dash-{name}.png"
            out = subprocess.run(
                [
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    f"--user-data-dir={tmp_path / 'chrome'}",
                    f"--screenshot={shot}",
                    "--window-size=1280,900",
                    "--virtual-time-budget=10000",
                    "--dump-dom",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert out.returncode == 0, out.stderr[-2000:]
            assert shot.stat().st_size > 10_000
            doms[name] = out.stdout
    for dom in doms.values():
        assert "tiny (id=" in dom  # the study's name in the page header
    assert "History" in doms["study"]
    for trial in study.trials:
        assert f"Trial {trial.number}" in doms["trials"]
    assert GROUP_CHART in doms["trials"] and f"/artifacts/{sid}/" in doms["trials"]
    assert "★ Best trial (worst_group = " in doms["trials"]  # the note, rendered markdown
    shutil.copy(tmp_path / "dash-trials.png", tmp_path / "dash.png")
