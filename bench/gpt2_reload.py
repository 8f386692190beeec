"""Reload an `hpo export` of the GPT-2 example with `from_pretrained` and re-score it.

The export's `hf/` folder is loaded with `transformers.AutoModelForSequenceClassification`
(its config names `GPT2ForSequenceClassification`); the task is rebuilt through the
example's own data code (the factory and options in the export's config.json, at its task
seed; its data hash is checked against the export's), and worst-group accuracy on val and
test is compared with metrics.json, for the debiased model and the factory's original:

    .venv/bin/python bench/gpt2_reload.py /tmp/gpt2_export [--out reload.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo import Split
from hpo.tasks.bundle import tensor_digest
from hpo.tasks.factory_import import import_factory
from hpo.tasks.user import SPLITS


def worst_group(model: nn.Module, split: Split, n_groups: int) -> float:
    """The lowest per-group accuracy of `model` on `split` (logits from a ModelOutput)."""
    with torch.no_grad():
        out = model(split.x)
    correct = (getattr(out, "logits", out).argmax(-1) == split.y).double()
    return min(float(correct[split.groups == g].mean()) for g in range(n_groups))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export", type=Path, help="the folder hpo export wrote")
    ap.add_argument("--out", type=Path, help="a JSON file for the numbers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForSequenceClassification

    config = json.loads((args.export / "config.json").read_text())
    metrics = json.loads((args.export / "metrics.json").read_text())
    factory = import_factory(config["task"]["factory"])  # as the service imports it
    task = factory(seed=config["task"]["seed"], **config["task"]["options"])
    sha = tensor_digest([t for s in SPLITS for t in vars(getattr(task, s)).values()])
    recorded = config["provenance"]["data_sha256"]
    print(f"data sha256 {sha} (the export's: {recorded}; same: {sha == recorded})")
    model = AutoModelForSequenceClassification.from_pretrained(args.export / "hf").eval()
    models = {"debiased": model, "original": task.model}
    rows: dict[str, Any] = {
        "class": type(model).__name__,
        "data_sha256": sha,
        "same_data": sha == recorded,
        "checks": [],
    }
    for which, m in models.items():
        for split in ("val", "test"):
            got = worst_group(m, getattr(task, split), len(task.group_names))
            want = metrics["models"][which][split]["worst_group"]
            same = math.isclose(got, want, rel_tol=0.0, abs_tol=1e-9)
            rows["checks"].append(
                {
                    "model": which,
                    "split": split,
                    "reloaded": got,
                    "metrics.json": want,
                    "equal": same,
                }
            )
            print(
                f"{which:8s} {split:4s} reloaded {got:.6f}  metrics.json {want:.6f}  equal {same}"
            )
    print(f"class {rows['class']}; all equal: {all(c['equal'] for c in rows['checks'])}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
