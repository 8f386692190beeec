"""Bad input, as a new user types it (or an attacker): one line, no traceback, no writes.

Every case runs `hpo ...` in this process (fast: no interpreter start per case) from a
fresh folder, and must end with exit code 2 and exactly one line on stderr, starting
`error: `, with no traceback anywhere; and every file under that folder (a database, an
empty file standing in for one, a study file) and the shared study's database must be
byte for byte as before, with no file or folder created. Each case is one function below,
registered with `@case`, that prepares its files and returns the command line.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import tomli_w
import torch
from helpers import toy_study

from hpo.cli import main
from hpo.service.runner import launch
from hpo.storage.engine import open_storage

CASES: list[tuple[str, Callable[[World], list[str]]]] = []


def case(fn: Callable[[World], list[str]]) -> Callable[[World], list[str]]:
    CASES.append((fn.__name__, fn))
    return fn


@dataclass
class World:
    """The folder a case runs in (also the working directory), and what it can use."""

    root: Path
    existing: str  # URL of a launched toy study named "toy" (no trials), outside `root`
    monkeypatch: pytest.MonkeyPatch

    def study(self, name: str = "study.toml", **over: Any) -> str:
        """The toy study (see helpers.toy_study) with `section={...}` or
        `section__field=value` changed, written as `name`."""
        storage = over.pop("storage", {})
        path = toy_study(self.root, "toy", storage=storage, **over)
        return str(path.rename(self.root / name).relative_to(self.root))

    def raw(self, name: str, doc: dict[str, Any]) -> str:
        (self.root / name).write_text(tomli_w.dumps(doc))
        return name

    def file(self, name: str, data: bytes = b"") -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return name

    def folder(self, name: str, mode: int | None = None) -> str:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        if mode is not None:
            path.chmod(mode)
        return name

    def env(self, key: str, value: str) -> None:
        self.monkeypatch.setenv(key, value)

    def gpus(self, n: int) -> None:
        """This process sees `n` CUDA devices (faked: the checks run before any CUDA call)."""
        self.monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        self.monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `root`."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            found[rel] = None
        else:
            try:
                found[rel] = path.read_bytes()
            except PermissionError:  # a case's unreadable file, as a non-root user
                found[rel] = b"<unreadable>"
    return found


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A toy study launched (no trials) for the commands that read one."""
    root = tmp_path_factory.mktemp("existing")
    path = toy_study(root, "toy", storage={})
    url = f"sqlite:///{root / 'toy.db'}"
    assert (
        launch(str(path), workers=0, n_trials=None, storage_url=url, data_dir=None, quiet=True) == 0
    )
    # The launch's engines are in reference cycles: collected now, their connections close
    # (the last one checkpoints and removes the -wal) before any case looks, not in the
    # middle of one, which changed the database under a case on a busy machine.
    gc.collect()
    return url


@pytest.fixture
def world(tmp_path: Path, existing: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.chdir(tmp_path)
    yield World(tmp_path, existing, monkeypatch)
    for path in tmp_path.rglob("*"):  # let pytest clean up what a case made read-only
        path.chmod(0o755 if path.is_dir() else 0o644)


def _existing_db(world: World) -> dict[str, bytes | None]:
    """The shared study's folder: its database and whatever lies beside it, so a -wal or
    -shm file a reader left shows here. This process keeps the study's connections open
    (the fixture launched it here), so its -wal and -shm may exist already; the -shm is
    SQLite's shared-memory index, whose read marks every reader moves: its name counts,
    not its bytes."""
    found = tree(Path(world.existing.removeprefix("sqlite:///")).parent)
    return {k: None if k.endswith("-shm") else v for k, v in found.items()}


# ---- the study file itself --------------------------------------------------------------


@case
def trial_study_file_is_a_folder(w: World) -> list[str]:
    return ["trial", w.folder("studies")]


@case
def launch_study_file_is_a_folder(w: World) -> list[str]:
    return ["launch", w.folder("study.toml"), "--workers", "0"]


@case
def trial_study_file_unreadable(w: World) -> list[str]:
    path = w.study()
    (w.root / path).chmod(0)
    return ["trial", path]


@case
def launch_study_file_unreadable(w: World) -> list[str]:
    path = w.study()
    (w.root / path).chmod(0o200)
    return ["launch", path, "--workers", "0"]


@case
def trial_study_file_latin1(w: World) -> list[str]:
    text = (w.root / w.study()).read_text()
    return ["trial", w.file("latin1.toml", "# café\n".encode("latin-1") + text.encode())]


@case
def launch_study_file_utf16(w: World) -> list[str]:
    text = (w.root / w.study()).read_text()
    return ["launch", w.file("utf16.toml", text.encode("utf-16")), "--workers", "0"]


@case
def trial_study_file_missing(w: World) -> list[str]:
    return ["trial", "nowhere.toml"]


@case
def launch_study_file_not_toml(w: World) -> list[str]:
    return ["launch", w.file("broken.toml", b"[study\nname = 'x'\n"), "--workers", "0"]


# ---- storage URLs -------------------------------------------------------------------------


@case
def launch_url_unparseable(w: World) -> list[str]:
    return ["launch", w.study(), "--workers", "0", "--storage", "not a url"]


@case
def launch_url_port_not_a_number(w: World) -> list[str]:
    url = "postgresql+psycopg://hpo:pw@db.invalid:abc/hpo"
    return ["launch", w.study(), "--workers", "0", "--storage", url]


@case
def status_url_port_out_of_range(w: World) -> list[str]:
    return ["status", "--storage", "postgresql+psycopg://hpo@db.invalid:99999/hpo"]


@case
def status_url_unknown_database_kind(w: World) -> list[str]:
    return ["status", "--storage", "nosuchdb://host/db"]


@case
def worker_url_unparseable(w: World) -> list[str]:
    return ["worker", "--study", "toy", "--storage", "::not-a-url::"]


@case
def report_url_unparseable(w: World) -> list[str]:
    return ["report", "toy", "--storage", "sqlite//x.db", "--out", "r.html"]


@case
def export_url_port_not_a_number(w: World) -> list[str]:
    return ["export", "toy", "--storage", "postgresql://u@h:port/db", "--out", "out"]


@case
def launch_study_file_url_unparseable(w: World) -> list[str]:
    return ["launch", w.study(storage={"url": "sqlite:/x.db:what"}), "--workers", "0"]


@case
def launch_sqlite_folder_is_a_file(w: World) -> list[str]:
    w.file("afile", b"x")
    return ["launch", w.study(), "--workers", "0", "--storage", "sqlite:///afile/toy.db"]


@case
def launch_sqlite_path_is_a_folder(w: World) -> list[str]:
    w.folder("toy.db")
    return ["launch", w.study(), "--workers", "0", "--storage", "sqlite:///toy.db"]


@case
def launch_artifacts_folder_is_a_file(w: World) -> list[str]:
    w.file("afile", b"x")
    study = w.study(storage={"artifacts": "afile/artifacts"})
    return ["launch", study, "--workers", "0", "--storage", "sqlite:///db/toy.db"]


@case
def launch_artifacts_folder_read_only(w: World) -> list[str]:
    w.folder("ro", mode=0o555)
    study = w.study(storage={"artifacts": "ro/artifacts"})
    return ["launch", study, "--workers", "0", "--storage", "sqlite:///db/toy.db"]


# ---- the cache folder ----------------------------------------------------------------------


@case
def trial_cache_folder_is_a_file(w: World) -> list[str]:
    w.env("HPO_CACHE_DIR", str(w.root / w.file("cache", b"x")))
    return ["trial", w.study()]


@case
def launch_cache_folder_read_only(w: World) -> list[str]:
    w.env("HPO_CACHE_DIR", str(w.root / w.folder("cache", mode=0o555) / "hpo"))
    return ["launch", w.study(), "--workers", "0", "--storage", "sqlite:///db/toy.db"]


# ---- where reports and exports go (checked before any re-scoring) --------------------------


@case
def report_out_is_a_folder(w: World) -> list[str]:
    return ["report", "toy", "--storage", w.existing, "--out", w.folder("reports")]


@case
def report_out_inside_a_file(w: World) -> list[str]:
    return ["report", "toy", "--storage", w.existing, "--out", w.file("afile") + "/r.html"]


@case
def export_out_inside_a_file(w: World) -> list[str]:
    return ["export", "toy", "--storage", w.existing, "--out", w.file("afile") + "/model"]


@case
def export_out_is_a_foreign_folder(w: World) -> list[str]:
    w.file("mine/notes.txt", b"keep me")
    return ["export", "toy", "--storage", w.existing, "--out", "mine"]


# ---- sampler and pruner options that Optuna rejects -----------------------------------------


def _launch_with(w: World, **over: Any) -> list[str]:
    return ["launch", w.study(**over), "--workers", "0", "--storage", "sqlite:///db/toy.db"]


@case
def launch_nsgaii_population_of_one(w: World) -> list[str]:
    return _launch_with(w, sampler={"name": "nsgaii", "options": {"population_size": 1}})


@case
def launch_nsgaii_mutation_probability_above_one(w: World) -> list[str]:
    return _launch_with(w, sampler={"name": "nsgaii", "options": {"mutation_prob": 2.0}})


@case
def launch_percentile_above_100(w: World) -> list[str]:
    return _launch_with(w, pruner={"name": "percentile", "options": {"percentile": 150.0}})


@case
def launch_successive_halving_reduction_factor_one(w: World) -> list[str]:
    pruner = {"name": "successive_halving", "options": {"reduction_factor": 1}}
    return _launch_with(w, pruner=pruner)


@case
def launch_median_negative_startup_trials(w: World) -> list[str]:
    return _launch_with(w, pruner={"name": "median", "options": {"n_startup_trials": -1}})


@case
def launch_tpe_startup_trials_a_string(w: World) -> list[str]:
    return _launch_with(w, sampler={"name": "tpe", "options": {"n_startup_trials": "two"}})


@case
def launch_tpe_unknown_option(w: World) -> list[str]:
    return _launch_with(w, sampler={"name": "tpe", "options": {"n_startup": 2}})


# ---- search spaces -----------------------------------------------------------------------


@case
def launch_float_range_infinite_high(w: World) -> list[str]:
    return _launch_with(w, search={"lr": {"low": 1e-3, "high": float("inf"), "log": True}})


@case
def launch_float_range_infinite_low(w: World) -> list[str]:
    return _launch_with(w, search={"faithful_weight": {"low": float("-inf"), "high": 1.0}})


@case
def launch_float_range_nan(w: World) -> list[str]:
    return _launch_with(w, search={"recon_weight": {"low": 0.1, "high": float("nan")}})


@case
def launch_choices_with_infinity(w: World) -> list[str]:
    return _launch_with(w, search={"lr": {"choices": [1e-3, float("inf")]}})


@case
def launch_int_range_step_does_not_divide(w: World) -> list[str]:
    return _launch_with(w, search={"n_components": {"low": 5, "high": 14, "step": 4}})


@case
def launch_search_layers_names_a_missing_layer(w: World) -> list[str]:
    return _launch_with(w, search={"layers": {"choices": ["W", "fc9"]}})


@case
def trial_params_layers_names_a_missing_layer(w: World) -> list[str]:
    return ["trial", w.study(params__layers="fc9")]


@case
def trial_params_layers_repeats_a_layer(w: World) -> list[str]:
    return ["trial", w.study(params__layers="W+W")]


@case
def trial_params_ablate_names_no_edit_strategy(w: World) -> list[str]:
    return ["trial", w.study(params__ablate="fited")]


@case
def launch_search_ablate_names_no_edit_strategy(w: World) -> list[str]:
    return _launch_with(w, search={"ablate": {"choices": ["conditioned", "bogus"]}})


@case
def trial_sampler_name_unknown(w: World) -> list[str]:
    return ["trial", w.study(sampler__name="tpee")]


@case
def status_of_a_study_the_storage_lacks(w: World) -> list[str]:
    return ["status", "nosuch", "--storage", w.existing]


@case
def trial_params_lr_infinite(w: World) -> list[str]:
    return ["trial", w.study(params__lr=float("inf"))]


# ---- types: TOML says what a value is --------------------------------------------------------


@case
def launch_n_trials_a_string(w: World) -> list[str]:
    return _launch_with(w, study={"name": "toy", "objectives": ["mmcs"], "n_trials": "2"})


@case
def launch_study_name_a_number(w: World) -> list[str]:
    return _launch_with(w, study={"name": 5, "objectives": ["mmcs"]})


@case
def launch_objectives_a_string(w: World) -> list[str]:
    return _launch_with(w, study={"name": "toy", "objectives": "mmcs"})


@case
def trial_steps_a_string(w: World) -> list[str]:
    return ["trial", w.study(params__steps="100")]


@case
def trial_faithful_ramp_an_int(w: World) -> list[str]:
    return ["trial", w.study(params__faithful_ramp=1)]


@case
def trial_n_components_a_float(w: World) -> list[str]:
    return ["trial", w.study(params__n_components=8.0)]


@case
def trial_sampler_seed_a_bool(w: World) -> list[str]:
    return ["trial", w.study(sampler={"name": "tpe", "seed": True})]


@case
def trial_task_probability_a_string(w: World) -> list[str]:
    return ["trial", w.study(task__feature_prob="0.05")]


@case
def trial_override_steps_a_string(w: World) -> list[str]:
    return ["trial", w.study(), "--set", 'params.steps="100"']


# ---- what only shows when it runs -----------------------------------------------------------


@case
def trial_structure_too_large(w: World) -> list[str]:
    return ["trial", w.study(), "--set", f"params.n_components={10**12}"]


@case
def launch_search_structure_too_large(w: World) -> list[str]:
    return _launch_with(w, search={"n_components": {"low": 5, "high": 10**12}})


@case
def trial_diverges(w: World) -> list[str]:
    return ["trial", w.study(), "--set", "params.lr=1e30", "--set", "params.steps=20"]


@case
def launch_mnist_missing(w: World) -> list[str]:
    task = {"kind": "colored_mnist", "base_model": "mlp"}
    study = w.study(task=task, study={"name": "cm", "objectives": ["worst_group"]})
    return ["launch", study, "--workers", "0", "--data-dir", w.folder("no-mnist")]


@case
def launch_colorized_folder_missing(w: World) -> list[str]:
    task = {"kind": "colored_mnist", "source": "colorized_folder", "colorized_root": "nowhere"}
    study = w.study(task=task, study={"name": "cm", "objectives": ["worst_group"]})
    return ["launch", study, "--workers", "0"]


@case
def trial_negative_seed(w: World) -> list[str]:
    return ["trial", w.study(), "--seed", "-1"]


@case
def trial_seed_beyond_numpy(w: World) -> list[str]:
    return ["trial", w.study(), "--seed", "99999999999999999999"]


def _colored_mnist(w: World, **task: Any) -> str:
    doc = {"kind": "colored_mnist", "base_model": "mlp", **task}
    return w.study(task=doc, study={"name": "cm", "objectives": ["worst_group"]})


@case
def trial_colour_without_digits(w: World) -> list[str]:
    return ["trial", _colored_mnist(w, color_digits=[list(range(10)), []])]


@case
def trial_fewer_val_images_per_digit_than_colours(w: World) -> list[str]:
    colors = ["red", "green", "blue", "yellow", "white"]
    digits = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    return ["trial", _colored_mnist(w, colors=colors, color_digits=digits, val_per_digit=2)]


# ---- a user's own model and data (issue 24): streamed splits, benchmark formats -----------

STREAMED_FACTORY = """
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from hpo import Split, UserTask


class Items(Dataset):
    def __init__(self, n, item):
        self.n, self.item = n, item

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.item(i)


def good(i):
    return {"inputs": torch.full((4,), float(i % 3)), "y": i % 2, "groups": i % 2,
            "concepts": (i // 2) % 2}


def make_task(seed, probe="good", shuffle=False):
    items = {
        "good": good,
        "no_labels": lambda i: {"inputs": torch.zeros(4), "groups": 0, "concepts": 0},
        "wrong_shape": lambda i: {**good(i), "y": torch.tensor([0, 1])},
    }[probe]
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    return UserTask(
        model=model, layer="0",
        probe=DataLoader(Items(16, items), batch_size=8, shuffle=shuffle),
        val=Items(8, good), test=Items(8, good),
        group_names=("a", "b"), concept_names=("s0", "s1"),
    )
"""


def _factory_study(w: World, **options: Any) -> str:
    """A python-kind study whose factory lies beside it, named relative to the study file
    (resolved against the study file's folder). Python's own bytecode cache stays off: it
    is no file of ours, but it would land in the folder compared."""
    w.monkeypatch.setattr(sys, "dont_write_bytecode", True)
    w.file("streamed_factory.py", STREAMED_FACTORY.encode())
    task = {"kind": "python", "factory": "streamed_factory.py:make_task", "options": options}
    return w.study(task=task, study={"name": "user", "objectives": ["worst_group"]})


@case
def trial_loader_without_labels(w: World) -> list[str]:
    return ["trial", _factory_study(w, probe="no_labels")]


@case
def trial_batch_of_the_wrong_shape(w: World) -> list[str]:
    return ["trial", _factory_study(w, probe="wrong_shape")]


@case
def launch_loader_that_shuffles(w: World) -> list[str]:
    return ["launch", _factory_study(w, shuffle=True), "--workers", "0"]


@case
def trial_factory_file_missing(w: World) -> list[str]:
    task = {"kind": "python", "factory": "no_such_factory.py:make_task"}
    return ["trial", w.study(task=task, study={"name": "user", "objectives": ["worst_group"]})]


def _image_study(w: World, **task: Any) -> str:
    from helpers import image_task, write_image_folder

    write_image_folder(w.root / "birds", per_group=2, size=8)
    w.file("resnet18.pt", b"")  # never read: every case fails before the weights
    base = image_task(Path("birds"), "resnet18.pt", metadata="birds/metadata.csv")
    return w.study(task={**base, **task}, study={"name": "img", "objectives": ["worst_group"]})


@case
def trial_image_metadata_csv_missing(w: World) -> list[str]:
    return ["trial", _image_study(w, metadata="birds/no_metadata.csv")]


@case
def trial_image_metadata_column_missing(w: World) -> list[str]:
    return ["trial", _image_study(w, columns={"attribute": "background"})]


@case
def launch_image_root_not_there(w: World) -> list[str]:
    return ["launch", _image_study(w, root="nowhere"), "--workers", "0"]


@case
def trial_image_named_by_the_csv_missing(w: World) -> list[str]:
    study = _image_study(w)
    (w.root / "birds/images/0020.png").unlink()  # a test image (0-7 train, 8-15 val)
    return ["trial", study]


@case
def trial_image_weights_not_there(w: World) -> list[str]:
    return ["trial", _image_study(w, weights="models/no_weights.pt")]


@case
def trial_image_split_value_absent(w: World) -> list[str]:
    return ["trial", _image_study(w, splits={"test": "7"})]


def _text_study(w: World, **task: Any) -> str:
    from helpers import write_text_csv

    write_text_csv(w.root / "texts.csv", per_group=2)
    base = {"kind": "text_csv", "metadata": "texts.csv", "model": "tiny-bert", **task}
    base.setdefault("splits", {"probe": "val", "val": "val", "test": "test"})
    return w.study(task=base, study={"name": "txt", "objectives": ["worst_group"]})


@case
def trial_text_model_folder_not_there(w: World) -> list[str]:
    return ["trial", _text_study(w)]


@case
def trial_text_column_missing(w: World) -> list[str]:
    return ["trial", _text_study(w, columns={"text": "comment_text"})]


def _existing_db_bytes(w: World) -> bytes:
    return Path(w.existing.removeprefix("sqlite:///")).read_bytes()


# ---- readers never create or change a storage ------------------------------------------------


@case
def status_missing_sqlite_file(w: World) -> list[str]:
    return ["status", "--storage", "sqlite:///missing.db"]


@case
def status_empty_file(w: World) -> list[str]:
    return ["status", "--storage", f"sqlite:///{w.file('empty.db')}"]


@case
def status_empty_file_found_under_storage(w: World) -> list[str]:
    w.file("storage/empty.db")
    return ["status"]


@case
def status_not_a_database(w: World) -> list[str]:
    return ["status", "--storage", f"sqlite:///{w.file('notes.db', b'hello, not sqlite')}"]


@case
def status_sqlite_without_studies(w: World) -> list[str]:
    conn = sqlite3.connect(w.root / "other.db")
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    return ["status", "--storage", "sqlite:///other.db"]


@case
def status_truncated_study_database(w: World) -> list[str]:
    """The first 100 bytes of a real study database: a whole header, nothing else."""
    return ["status", "--storage", f"sqlite:///{w.file('cut.db', _existing_db_bytes(w)[:100])}"]


@case
def export_truncated_study_database_header_count_stale(w: World) -> list[str]:
    """Its first three pages, with a page count SQLite does not trust (bytes 92-95 no
    longer match the change counter): only reading it finds the damage. The file is in
    WAL mode, whose readers make -wal and -shm files unless told it cannot change."""
    data = bytearray(_existing_db_bytes(w)[: 3 * 4096])
    assert data[18] == data[19] == 2  # WAL mode
    data[92:96] = (int.from_bytes(data[24:28], "big") + 1).to_bytes(4, "big")
    return ["export", "toy", "--storage", f"sqlite:///{w.file('cut.db', bytes(data))}"]


@case
def worker_missing_sqlite_file(w: World) -> list[str]:
    return ["worker", "--study", "toy", "--storage", "sqlite:///missing.db"]


@case
def worker_empty_file(w: World) -> list[str]:
    return ["worker", "--study", "toy", "--storage", f"sqlite:///{w.file('empty.db')}"]


@case
def dashboard_read_only_missing_sqlite_file(w: World) -> list[str]:
    return ["dashboard", "--read-only", "--port", "0", "--storage", "sqlite:///missing.db"]


@case
def dashboard_missing_sqlite_file(w: World) -> list[str]:
    return ["dashboard", "--port", "0", "--storage", "sqlite:///missing.db"]


@case
def report_missing_sqlite_file(w: World) -> list[str]:
    return ["report", "toy", "--storage", "sqlite:///missing.db", "--out", "r.html"]


@case
def export_empty_file(w: World) -> list[str]:
    return ["export", "toy", "--storage", f"sqlite:///{w.file('empty.db')}", "--out", "m"]


@case
def worker_unknown_study(w: World) -> list[str]:
    return ["worker", "--study", "nope", "--storage", w.existing]


def _foreign_study(w: World) -> str:
    """A study another tool made (no study file stored), in a database of its own, opened
    once as hpo opens any (so that it is in the journal mode hpo's engines keep)."""
    url = f"sqlite:///{w.root / 'foreign.db'}"
    optuna.create_study(study_name="foreign", storage=open_storage(url, heartbeat=False))
    gc.collect()
    return url


@case
def worker_of_a_study_hpo_did_not_launch(w: World) -> list[str]:
    return ["worker", "--study", "foreign", "--storage", _foreign_study(w)]


@case
def confirm_zero_threads(w: World) -> list[str]:
    return ["confirm", "toy", "--storage", w.existing, "--threads", "0"]


@case
def confirm_a_study_hpo_did_not_launch(w: World) -> list[str]:
    return ["confirm", "foreign", "--storage", _foreign_study(w)]


# ---- command-line values -------------------------------------------------------------------


@case
def worker_zero_threads(w: World) -> list[str]:
    return ["worker", "--study", "toy", "--storage", w.existing, "--threads", "0"]


@case
def launch_negative_workers(w: World) -> list[str]:
    return ["launch", w.study(), "--workers", "-1"]


@case
def dashboard_port_out_of_range(w: World) -> list[str]:
    return ["dashboard", "--storage", w.existing, "--port", "70000"]


# ---- GPUs (the device count faked; nothing here needs one) ----------------------------------


@case
def launch_gpus_beyond_the_visible(w: World) -> list[str]:
    w.gpus(2)
    return _launch_with(w) + ["--workers", "2", "--gpus", "5"]


@case
def launch_gpus_not_indices(w: World) -> list[str]:
    w.gpus(2)
    return _launch_with(w) + ["--gpus", "abc"]


@case
def launch_gpus_negative(w: World) -> list[str]:
    w.gpus(2)
    return _launch_with(w) + ["--gpus", "0,-1"]


@case
def launch_gpus_repeated(w: World) -> list[str]:
    w.gpus(2)
    return _launch_with(w) + ["--gpus", "1,1"]


@case
def launch_gpus_without_cuda(w: World) -> list[str]:
    w.gpus(0)
    return _launch_with(w) + ["--gpus", "0"]


@case
def launch_gpus_contradict_the_study_device(w: World) -> list[str]:
    w.gpus(2)
    study = w.study(params__device="cpu")
    return ["launch", study, "--workers", "0", "--storage", "sqlite:///db/toy.db", "--gpus", "1"]


@case
def worker_gpu_negative(w: World) -> list[str]:
    w.gpus(2)
    return ["worker", "--study", "toy", "--storage", w.existing, "--gpu", "-1"]


@case
def worker_gpu_beyond_the_visible(w: World) -> list[str]:
    w.gpus(2)
    return ["worker", "--study", "toy", "--storage", w.existing, "--gpu", "2"]


@case
def worker_gpu_without_cuda(w: World) -> list[str]:
    w.gpus(0)
    return ["worker", "--study", "toy", "--storage", w.existing, "--gpu", "0"]


@case
def trial_params_device_beyond_the_visible(w: World) -> list[str]:
    w.gpus(2)
    return ["trial", w.study(params__device="cuda:5")]


def test_the_battery_is_large() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("make", [fn for _, fn in CASES], ids=[name for name, _ in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(
    make: Callable[[World], list[str]], world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = make(world)
    before, db_before = tree(world.root), _existing_db(world)
    capsys.readouterr()
    code = main(argv)
    gc.collect()  # what the command left open closes, as it would when its process exits
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert tree(world.root) == before, "a bad input wrote or created a file"
    assert _existing_db(world) == db_before


def test_status_on_an_empty_file_leaves_it_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert main(["status", "--storage", f"sqlite:///{empty}"]) == 2
    assert empty.read_bytes() == b"" and sorted(os.listdir(tmp_path)) == ["empty.db"]
