"""`hpo confirm`: the best trials re-run with fresh seeds; export then takes the confirmed
best by mean validation value, and says so."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import run_tiny_study

from hpo.cli import main
from hpo.outputs.summary import study_summary
from hpo.service.attrs import CONFIRMATION_ATTR, CONFIRMED_BEST_ATTR

pytestmark = pytest.mark.slow


def test_confirm_stores_mean_and_std_and_export_takes_the_confirmed_best(
    tmp_path: Path, tiny_mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = run_tiny_study(tmp_path, tiny_mnist_dir, "conf", n_trials=3)

    assert main(["confirm", "conf", "--storage", url, "--top", "2", "--seeds", "2"]) == 0
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

    summary = "\n".join(study_summary(study))  # what hpo launch prints at the end
    assert "validation worst-group accuracy: original" in summary
    assert "references on the same split: oracle" in summary and "leace" in summary
    assert f"confirmed best: trial {best['trial']}" in summary
    assert "hpo export conf" in summary and "hpo report conf" in summary

    out = tmp_path / "model"
    assert main(["export", "conf", "--storage", url, "--out", str(out)]) == 0
    said = capsys.readouterr().err
    assert f"exported trial {best['trial']}: the confirmed best" in said
    assert (out / "model.pt").is_file()
