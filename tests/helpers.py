"""Helpers the test modules share: study files to write, studies to run, the CLI in a
subprocess. Test modules import from here (and fixtures come from conftest.py), never
from one another.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w

# ----------------------------------------------------------------------- the CLI


def hpo(
    *args: str, env: dict[str, str], timeout: float = 900, **kw: Any
) -> subprocess.CompletedProcess:
    """`hpo ARGS` in its own process, as a user runs it; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# ----------------------------------------------------------------------- tiny study

TINY_STUDY: dict[str, Any] = {
    "study": {"name": "tiny", "objectives": ["worst_group"], "n_trials": 2},
    "task": {
        "kind": "colored_mnist",
        "colors": ["red", "green"],
        "color_digits": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
        "bias": 0.9,
        "train_per_digit": 24,
        "probe_per_digit": 20,
        "val_per_digit": 16,
        "test_per_digit": 30,
        "base_model": "mlp",
        "base_epochs": 2,
    },
    "params": {
        "n_components": 32,
        "top_k": 4,
        "steps": 60,
        "eval_every": 20,
        "batch_size": 64,
    },
}


def tiny_study_dict() -> dict[str, Any]:
    """A fresh copy of the tiny colored-MNIST study, to tweak before writing."""
    return copy.deepcopy(TINY_STUDY)


def write_study(path: Path, study: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(study))
    return path


def run_tiny_study(
    root: Path, data_dir: Path, name: str, n_trials: int = 3, **sections: dict[str, Any]
) -> str:
    """Launch the tiny study with a search space and run its trials, as `hpo launch`
    does, but in this process (the tiny MNIST is only valid inside it)."""
    from hpo.outputs.notes import publish_for_dashboard
    from hpo.service.runner import launch, work

    doc = tiny_study_dict()
    doc["study"].update(name=name, n_trials=n_trials)
    doc["pruner"] = {"name": "none"}
    doc["search"] = {
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "faithful_weight": {"low": 0.1, "high": 10.0, "log": True},
    }
    for section, fields in sections.items():
        doc.setdefault(section, {}).update(fields)
    path = write_study(root / f"{name}.toml", doc)
    url = f"sqlite:///{root / 'storage' / f'{name}.db'}"
    assert (
        launch(
            str(path), workers=0, n_trials=None, storage_url=url, data_dir=str(data_dir), quiet=True
        )
        == 0
    )
    assert work(name, url, worker="test", threads=1, on_complete=publish_for_dashboard) == 0
    return url


# ----------------------------------------------------------------------- toy study


def toy_study(tmp: Path, name: str, *, storage: dict[str, Any], **over: Any) -> Path:
    """A toy-superposition study whose trials take about a second, with this storage
    section; `section__field=value` changes one field, `section={...}` a whole section."""
    doc: dict[str, Any] = {
        "study": {"name": name, "objectives": ["mmcs"], "n_trials": 6},
        "storage": {"heartbeat_interval": 1, "grace_period": 3, **storage},
        "sampler": {"name": "tpe", "options": {"n_startup_trials": 2}},
        "pruner": {"name": "none"},
        "task": {"kind": "toy_superposition", "train_steps": 300, "n_samples": 2000},
        "params": {
            "n_components": 5,
            "top_k": 1,
            "steps": 150,
            "eval_every": 50,
            "batch_size": 256,
            "cond_weight": 0.0,
            "sparsity_weight": 0.0,
            "decorr_weight": 0.0,
        },
        "search": {
            "lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "faithful_weight": {"low": 0.1, "high": 10.0, "log": True},
        },
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            doc[section][field] = value
        else:
            doc[section] = value
    path = tmp / f"{name}.toml"
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path
