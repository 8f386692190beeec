"""`hpo confirm`: the best trials re-run with fresh seeds; export then takes the confirmed
best by mean validation value, and says so."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import run_tiny_study

from hpo.cli import main
from hpo.outputs.summary import study_summary
from hpo.storage import compat
from hpo.storage.attrs import CONFIRMATION_ATTR, CONFIRMED_BEST_ATTR

pytestmark = pytest.mark.slow


def test_confirm_stores_mean_and_std_and_export_takes_the_confirmed_best(
    tmp_path: Path, tiny_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = run_tiny_study(tmp_path, tiny_mnist_dir, "conf", n_trials=3)

    assert (
        main(["confirm", "conf", "--storage", url, "--top", "2", "--seeds", "2", "--threads", "1"])
        == 0
    )
    table = capsys.readouterr().out
    assert "mean ± std" in table

    study = optuna.load_study(study_name="conf", storage=url)
    confirmed = study.user_attrs[CONFIRMATION_ATTR]
    assert len(confirmed) == 2
    for record in confirmed.values():
        assert record["seeds"] == [1000, 1001]  # never the study's own seed
        worst = record["val"]["worst_group"]
        assert len(worst["values"]) == 2 and worst["std"] >= 0
        assert worst["mean"] == pytest.approx(sum(worst["values"]) / 2)
        assert record["test_worst_group"] is not None  # reported, not used to choose
    best = study.user_attrs[CONFIRMED_BEST_ATTR]
    means = {int(n): r["val"]["worst_group"]["mean"] for n, r in confirmed.items()}
    assert best["trial"] == max(means, key=lambda n: (means[n], -n))

    for record in confirmed.values():  # each run with its own references, gap and errors
        assert [run["seed"] for run in record["runs"]] == [1000, 1001]
        for run in record["runs"]:
            assert {"original", "debiased", "leace", "oracle"} <= set(run["test_worst_group"])
            assert {"control_random", "control_svd"} <= set(run["test_worst_group"])
            assert run["errors"]["faithfulness_error"] >= 0
        lifts = [
            run["test_worst_group"]["debiased"]
            - max(run["test_worst_group"]["control_random"], run["test_worst_group"]["control_svd"])
            for run in record["runs"]
        ]
        assert record["test_lift"]["values"] == pytest.approx(lifts)
    assert "lift over controls (test)" in table

    summary = "\n".join(study_summary(study))  # what hpo launch prints at the end
    assert "validation worst-group accuracy: original" in summary
    assert "references on the same split: oracle" in summary and "leace" in summary
    assert f"confirmed best: trial {best['trial']}" in summary
    assert "hpo export conf" in summary and "hpo report conf" in summary

    assert main(["status", "conf", "--storage", url]) == 0  # the summary, on request
    status = capsys.readouterr().out
    assert f"confirmed best: trial {best['trial']}" in status and "hpo report conf" in status

    notes = study_notes(study)  # the dashboard note says it too
    assert "**Confirmed** over 2 fresh seeds" in notes[best["trial"]]

    report = tmp_path / "report.html"
    assert main(["report", "conf", "--storage", url, "--out", str(report)]) == 0
    page = report.read_text()
    assert "Confirmation over fresh seeds" in page and "leace (test)" in page

    out = tmp_path / "model"
    assert main(["export", "conf", "--storage", url, "--out", str(out)]) == 0
    said = capsys.readouterr().err
    assert f"exported trial {best['trial']}: the confirmed best" in said
    assert (out / "model.pt").is_file()


def study_notes(study: optuna.Study) -> dict[int, str]:
    """Trial number -> the body of its dashboard note."""
    attrs = compat.storage_of(study).get_study_system_attrs(compat.study_id(study))
    return {
        t.number: compat.get_note(attrs, compat.trial_id(t))["body"]
        for t in study.get_trials(deepcopy=False)
    }
