"""`hpo report` on tiny colored-MNIST studies run in this process.

What a user looks at: one HTML file that opens offline (plotly.js inlined, nothing
fetched from elsewhere) with every figure, the best trial's test numbers computed at
report time, and a one-line error naming the studies that exist for a bad name.
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from helpers import run_tiny_study

from hpo.cli import main
from hpo.outputs.report import TITLES

EXTERNAL = [
    r"<script[^>]*\bsrc\s*=",  # any <script src=...>: everything must be inline
    r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//",
    r"<(img|iframe|source|embed)[^>]*\bsrc\s*=\s*[\"']?(https?:)?//",
    r"@import\s+url\(\s*[\"']?(https?:)?//",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_mnist_dir: Path) -> str:
    return run_tiny_study(tmp_path_factory.mktemp("report"), tiny_mnist_dir, "tiny")


def report(url: str, name: str, out: Path) -> str:
    assert main(["report", name, "--storage", url, "--out", str(out)]) == 0
    return out.read_text()


def test_report_has_every_figure_and_opens_offline(tiny: str, tmp_path: Path) -> None:
    from hpo.outputs.rescore import rescore

    text = report(tiny, "tiny", tmp_path / "tiny.html")

    for key in ("history", "parallel", "importance", "states", "alpha", "groups", "budget"):
        assert f"<h2>{TITLES[key]}</h2>" in text, key
        assert f'"text":"{TITLES[key]}' in text, key  # the plotly figure's own title
    assert TITLES["pareto"] not in text  # one objective: no front
    assert text.count("plotly.js v") == 1  # inlined once, with the first figure
    assert text.count("Plotly.newPlot(") >= 7
    for pattern in EXTERNAL:
        assert not re.search(pattern, text, re.IGNORECASE), pattern

    study = optuna.load_study(study_name="tiny", storage=tiny)
    r = rescore(study, tiny, study.best_trial)
    test = vars(r.result.metric("debiased", "test"))
    assert f"<td>{100 * test['worst_group']:.1f}%</td>" in text  # test: computed here
    assert "never shown to the sampler" in text


def test_one_trial_study_reports_without_importances(
    tmp_path_factory: pytest.TempPathFactory, tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    url = run_tiny_study(tmp_path_factory.mktemp("one"), tiny_mnist_dir, "one", n_trials=1)
    text = report(url, "one", tmp_path / "one.html")
    assert "Parameter importances need at least two complete trials" in text
    assert f'"text":"{TITLES["groups"]}' in text


@pytest.mark.slow
def test_multi_objective_report_shows_the_pareto_front(
    tmp_path_factory: pytest.TempPathFactory, tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    url = run_tiny_study(
        tmp_path_factory.mktemp("front"),
        tiny_mnist_dir,
        "front",
        study={"objectives": ["worst_group", "faithfulness_error"]},
        sampler={"name": "random"},
    )
    text = report(url, "front", tmp_path / "front.html")
    assert f'"text":"{TITLES["pareto"]}' in text
    assert "Pareto front trials (re-scored)" in text
    assert f'"text":"{TITLES["history"]}: faithfulness_error' in text


def test_bad_study_name_is_one_line_listing_the_studies(
    tiny: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["report", "nosuch", "--storage", tiny]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: no study named 'nosuch'") and "studies there: tiny" in err

    # Without --storage: storage/<study>.db, and the studies found under storage/.
    monkeypatch.chdir(Path(tiny.removeprefix("sqlite:///")).parent.parent)
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)
    assert main(["report", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "studies under storage/: tiny (storage/tiny.db)" in err
    assert not Path("storage/nosuch.db").exists()
    assert not list(tmp_path.iterdir())
