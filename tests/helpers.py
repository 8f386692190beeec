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


# ------------------------------------------------------------- benchmark-format data


def write_image_folder(
    root: Path, *, per_group: int = 8, size: int = 24, bias: float = 0.95, seed: int = 0
) -> Path:
    """A Waterbirds-shaped folder: PNGs under root/images/ and root/metadata.csv with
    columns img_id, img_filename, y, split, place (split 0 train, 1 val, 2 test). The
    label is where a bright square sits (top left: 0, bottom right: 1); the attribute,
    the background's hue (red: 0, blue: 1), tied to the label with probability `bias` in
    train, balanced in val and test. Returns the CSV's path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["img_id,img_filename,y,split,place"]
    plan: list[tuple[int, int, int]] = []  # (split, y, place)
    for _ in range(4 * per_group):
        y = int(rng.integers(2))
        place = y if rng.random() < bias else 1 - y
        plan.append((0, y, place))
    for split in (1, 2):
        plan += [(split, y, p) for y in (0, 1) for p in (0, 1) for _ in range(per_group)]
    for i, (split, y, place) in enumerate(plan):
        pixels = rng.normal(0.3, 0.08, (size, size, 3))
        pixels[..., 0 if place == 0 else 2] += 0.4
        s = size // 3
        at = (slice(2, 2 + s), slice(2, 2 + s)) if y == 0 else (slice(-2 - s, -2),) * 2
        pixels[at] = 0.95
        name = f"images/{i:04d}.png"
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype("uint8")).save(root / name)
        rows.append(f"{i},{name},{y},{split},{place}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root / "metadata.csv"


def random_torchvision_weights(path: Path, arch: str = "resnet18", n_classes: int = 2) -> Path:
    """A randomly initialised torchvision classifier's state dict (the tests' stand-in
    for a user's trained model)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=n_classes)
    torch.save(model.state_dict(), path)
    return path


def image_task(root: Path, weights: Path | str, **over: Any) -> dict[str, Any]:
    """The `[task]` section for write_image_folder's data (small images, resnet18)."""
    return {
        "kind": "image_folder",
        "root": str(root),
        "metadata": str(root / "metadata.csv"),
        "arch": "resnet18",
        "weights": str(weights),
        "image_size": 24,
        "resize": 24,
        "batch_size": 16,
        **over,
    }


TEXT_WORDS = "the a cat dog sat ran on mat by lake field bird fish quick slow".split()


def write_text_csv(path: Path, *, per_group: int = 10, seed: int = 0) -> Path:
    """A CSV of short texts: label 1 when 'bird' occurs, attribute 1 when 'lake' does
    (columns text, label, attribute, split; split train / val / test)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = ["text,label,attribute,split"]
    for split in ("val", "test"):
        for y in (0, 1):
            for a in (0, 1):
                for _ in range(per_group):
                    words = list(rng.choice(TEXT_WORDS[:12], size=int(rng.integers(3, 7))))
                    words = [w for w in words if w not in ("bird", "lake")]
                    words += ["bird"] * y + ["lake"] * a
                    rng.shuffle(words)
                    rows.append(f"{' '.join(words)},{y},{a},{split}")
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_text_model(folder: Path, n_labels: int = 2) -> Path:
    """A one-layer BERT classifier and its word-piece tokenizer, random weights, saved
    with save_pretrained (the tests' stand-in for a user's fine-tuned model)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TEXT_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(
        vocab_size=len(TEXT_WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=n_labels,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
