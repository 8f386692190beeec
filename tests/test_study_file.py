"""Study files: loading, `--set` overrides, and errors a person can act on.

Every error is a `UserError` naming the file and the field, the bad value, and what would
be valid: the CLI prints it as one line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hpo.config import StudyFile, TrialParams
from hpo.data.colored_mnist import PALETTE
from hpo.errors import UserError
from hpo.search_spec import FloatRange
from hpo.service.study_file import load_study_file
from hpo.tasks.colored_mnist import ColoredMnistTask
from hpo.tasks.toy import ToyTask

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml"))


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_study_file(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_tiny_study_loads_with_the_schema_defaults_for_the_rest(tiny_study: Path) -> None:
    study = load_study_file(tiny_study)

    assert isinstance(study, StudyFile)
    assert isinstance(study.task, ColoredMnistTask)
    assert study.task.base_model == "mlp" and study.params.steps == 60
    assert study.params.lr == TrialParams.model_fields["lr"].default
    assert study.directions == ["maximize"]


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_the_shipped_studies_validate(path: Path) -> None:
    study = load_study_file(path)

    assert study.study.name
    assert study.search, "a shipped study should have something to search"


def test_both_tasks_are_shipped() -> None:
    kinds = {type(load_study_file(path).task) for path in STUDIES}
    assert {ColoredMnistTask, ToyTask} <= kinds


def test_set_overrides_fields_with_toml_values(tiny_study: Path) -> None:
    study = load_study_file(
        tiny_study,
        [
            "params.steps=5",
            "task.bias=0.5",
            "params.faithful_ramp=true",
            "task.colors=['red', 'blue']",
            "params.device=cpu",  # not TOML: taken as the bare string
            "search.lr={ low = 1e-4, high = 1e-2, log = true }",
        ],
    )

    assert study.params.steps == 5
    assert study.task.bias == 0.5
    assert study.params.faithful_ramp is True
    assert study.task.colors == ("red", "blue")
    assert study.params.device == "cpu"
    assert study.search["lr"] == FloatRange(low=1e-4, high=1e-2, log=True)


def test_set_is_validated_like_the_file(tiny_study: Path) -> None:
    message = error_of(tiny_study, ["task.bias=1.5"])
    assert "task.bias" in message and "1.5" in message


@pytest.mark.parametrize("item", ["steps=5", "params.steps"])
def test_a_malformed_set_says_the_expected_form(tiny_study: Path, item: str) -> None:
    message = error_of(tiny_study, [item])
    assert repr(item) in message and "SECTION.KEY=VALUE" in message


def test_an_unknown_key_is_named_with_the_valid_keys(make_study: Callable[..., Path]) -> None:
    message = error_of(make_study(params={"stepz": 300}))

    assert "params.stepz: unknown key" in message
    assert "valid keys:" in message
    assert all(name in message for name in TrialParams.model_fields)


@pytest.mark.parametrize(
    ("section", "key", "valid"),
    [("task", "biass", "bias"), ("study", "trials", "n_trials"), ("sampler", "sede", "seed")],
)
def test_unknown_keys_in_every_section_are_named(
    make_study: Callable[..., Path], section: str, key: str, valid: str
) -> None:
    message = error_of(make_study(**{section: {key: 1}}))

    assert f"{section}.{key}: unknown key" in message
    assert valid in message


def test_an_unknown_section_is_named(make_study: Callable[..., Path]) -> None:
    message = error_of(make_study(paramz={"steps": 3}))
    assert "paramz: unknown key" in message and "params" in message


def test_the_error_names_the_file(make_study: Callable[..., Path]) -> None:
    path = make_study(params={"stepz": 300})
    assert error_of(path).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"low": 1e-2, "high": 1e-3}, "search.lr: low (0.01) must be below high (0.001)"),
        ({"low": 1e-3, "high": 1e-3}, "must be below high"),
        ({"low": 0.0, "high": 1e-3, "log": True}, "search.lr: a log range needs low > 0"),
    ],
)
def test_bad_float_ranges(make_study: Callable[..., Path], spec: dict, expected: str) -> None:
    assert expected in error_of(make_study(search={"lr": spec}))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"low": 64, "high": 16}, "search.n_components: low (64) must be below high (16)"),
        ({"low": 0, "high": 16, "log": True}, "a log range needs low > 0"),
        ({"low": 4, "high": 16, "log": True, "step": 2}, "both log = true and step > 1"),
    ],
)
def test_bad_int_ranges(make_study: Callable[..., Path], spec: dict, expected: str) -> None:
    assert expected in error_of(make_study(search={"n_components": spec}))


def test_a_search_over_an_unknown_parameter_lists_the_parameters(
    make_study: Callable[..., Path],
) -> None:
    message = error_of(make_study(search={"topk": {"choices": [4, 8]}}))
    assert "search.topk: not a trial parameter" in message and "top_k" in message


def test_an_unknown_colour_lists_the_palette(make_study: Callable[..., Path]) -> None:
    message = error_of(make_study(task={"colors": ["red", "mauve"]}))

    assert "task.colors" in message and "'mauve'" in message
    assert all(name in message for name in PALETTE)


def test_top_k_above_n_components(make_study: Callable[..., Path]) -> None:
    message = error_of(make_study(params={"n_components": 8, "top_k": 16}))
    assert "top_k (16) must not exceed n_components (8)" in message


def test_a_search_that_can_reach_top_k_above_n_components(
    make_study: Callable[..., Path],
) -> None:
    message = error_of(make_study(search={"top_k": {"choices": [4, 64]}}))
    assert "search.top_k: value 64 is invalid" in message
    assert "must not exceed n_components (32)" in message


def test_an_unknown_task_kind(make_study: Callable[..., Path]) -> None:
    message = error_of(make_study(task={"kind": "cifar"}))
    assert "'cifar'" in message and "colored_mnist" in message and "toy_superposition" in message


def test_an_objective_the_task_does_not_have(make_study: Callable[..., Path]) -> None:
    message = error_of(make_study(study={"objectives": ["mmcs"]}))
    assert "unknown objective 'mmcs'" in message and "worst_group" in message


def test_a_missing_section(make_study: Callable[..., Path]) -> None:
    path = make_study()
    path.write_text(path.read_text().replace("[study]", "[studyy]"))
    message = error_of(path)
    assert "study: required but missing" in message


def test_bad_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[study]\nname = "x"\n[params\nsteps = 3\n')

    message = error_of(path)

    assert message.startswith(f"{path}: not valid TOML")
    assert "line 3" in message


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"{path}: no such study file"


def test_start_from_params_needs_values_the_search_can_sample(
    make_study: Callable[..., Path],
) -> None:
    path = make_study(
        study={"name": "s", "start_from_params": True},
        params={"lr": 0.5},
        search={"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
    )
    message = error_of(path)
    assert "params.lr = 0.5 is outside search.lr (0.001 … 0.01)" in message
    assert "start_from_params" in message
    choice = make_study(
        study={"name": "s", "start_from_params": True},
        params={"layers": "fc1"},
        search={"layers": {"choices": ["fc2", "fc1+fc2"]}},
    )
    assert "params.layers = 'fc1' is outside search.layers ('fc2', 'fc1+fc2')" in error_of(choice)


def test_start_from_params_enqueues_the_files_params_as_the_first_trial(
    make_study: Callable[..., Path], tmp_path: Path
) -> None:
    import optuna

    from hpo.service.search_space import suggest
    from hpo.service.studies import create_or_load

    path = make_study(
        study={"name": "s", "start_from_params": True},
        params={"lr": 0.004, "top_k": 8, "layers": "fc1+fc2"},
        search={
            "lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "top_k": {"choices": [4, 8, 16]},
            "layers": {"choices": ["fc1", "fc1+fc2"]},
            "steps": 7,
        },
    )
    study_file = load_study_file(path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = create_or_load(study_file, storage, None)
    first = suggest(study.ask(), study_file)
    assert (first.lr, first.top_k, first.layers, first.steps) == (0.004, 8, "fc1+fc2", 7)
    again = create_or_load(study_file, storage, None)  # a relaunch enqueues nothing more
    assert not [t for t in again.get_trials() if t.state == optuna.trial.TrialState.WAITING]


def test_task_paths_are_relative_to_the_study_file_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: a study file names its factory and data beside itself, and runs from
    anywhere; what `--set` gives is relative to the working folder, as a shell path is."""
    import tomli_w

    folder = tmp_path / "project" / "studies"
    folder.mkdir(parents=True)
    doc = {
        "study": {"name": "mine", "objectives": ["worst_group"]},
        "task": {"kind": "python", "factory": "../tasks/make.py:make_task"},
    }
    (folder / "mine.toml").write_text(tomli_w.dumps(doc))
    monkeypatch.chdir(tmp_path)
    study = load_study_file("project/studies/mine.toml")
    assert study.task.factory == f"{folder}/../tasks/make.py:make_task"
    again = load_study_file("project/studies/mine.toml", ["task.factory='here.py:make_task'"])
    assert again.task.factory == f"{tmp_path}/here.py:make_task"
    doc["task"]["factory"] = "my_tasks.waterbirds:make_task"  # a module name: not a path
    (folder / "mine.toml").write_text(tomli_w.dumps(doc))
    assert load_study_file("project/studies/mine.toml").task.factory == doc["task"]["factory"]
    doc["task"] = {
        "kind": "image_folder",
        "root": "data/birds",
        "metadata": "/abs/metadata.csv",
        "weights": "~/erm.pt",
    }
    (folder / "mine.toml").write_text(tomli_w.dumps(doc))
    task = load_study_file("project/studies/mine.toml").task
    assert (task.root, task.metadata, task.weights) == (
        f"{folder}/data/birds",
        "/abs/metadata.csv",
        "~/erm.pt",
    )
