"""A user task's trial against the same-sized built-in one, side by side (issue 24).

The user task is the built-in one handed over as `[task] kind = "python"`: the same
colored-MNIST splits and the same trained base model, returned by the factory below as a
`UserTask`. The service then sees an ordinary user model (a `torch.export` program,
without the built-in models' `head`), so any difference in trial time is what the
service does with a model it did not write. Both contexts are built (and cached) before
the clock starts; the trials alternate, `--repeats` times, on the same seed, and the
medians of SAE training, scoring and the whole trial are printed with their ratios.

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/user_model_trial.py \
        studies/colored_mnist_quick.toml --repeats 3 [--set task.base_model=cnn] [--threads 1] \
        [--out runs.json]

`--out` writes every run's phase times, the data's sha256 and the versions as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hpo import UserTask
from hpo.models.classifiers import ColorMnistCNN, ColorMnistMLP
from hpo.service.study_file import load_study_file
from hpo.service.trial import prepare_task, run_trial

HERE = Path(__file__).resolve()


class UserMLP(ColorMnistMLP):
    """The built-in MLP as a user would write it: no `LAYERS`, so no `head` to run from."""

    LAYERS = ()


class UserCNN(ColorMnistCNN):
    """The built-in CNN, without `LAYERS`."""

    LAYERS = ()


def make_task(seed: int, task: dict[str, Any]) -> UserTask:
    """The built-in colored-MNIST task `task` (its `[task]` section), as a user task: the
    same splits, and the same trained weights in a class the service knows nothing of."""
    from hpo.tasks import colored_mnist as cm

    cfg = cm.ColoredMnistTask.model_validate({**task, "seed": seed})
    splits, sha = cm.load_splits(cfg, None, progress=False)
    base = cm.trained_models(cfg, splits, sha, torch.device("cpu"), progress=False)["base"]
    user = {"mlp": UserMLP, "cnn": UserCNN}[cfg.base_model]()
    user.load_state_dict(base.state_dict())
    return cm.as_user_task(cfg, splits, user.eval())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads for both (1: a busy machine)"
    )
    ap.add_argument("--out", type=Path, help="a JSON file for every run's numbers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, 'task.references=["last_layer", "leace"]']
    builtin = load_study_file(args.study, overrides)
    task = builtin.task.model_dump(mode="json", exclude={"kind", "seed", "references"})
    user = builtin.model_copy(update={"task": python_task(builtin, task)})
    studies = {"built-in": builtin, "user": user}
    contexts = {
        name: prepare_task(s, data_dir=None, progress=False, device="cpu")
        for name, s in studies.items()
    }
    times: dict[str, dict[str, list[float]]] = {n: {} for n in studies}
    worst: dict[str, list[float]] = {n: [] for n in studies}
    for _ in range(args.repeats):
        for name, study in studies.items():
            t0 = time.perf_counter()
            result, _ = run_trial(study, contexts[name], study.params, with_test=True)
            wall = time.perf_counter() - t0
            for key, value in (
                ("sae_training", result.timings["sae_training"]),
                ("scoring", result.timings["scoring"]),
                ("trial", wall),
            ):
                times[name].setdefault(key, []).append(value)
            worst[name].append(result.objectives["worst_group"])
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(
        f"| {args.study} {' '.join(args.overrides)} | median of {args.repeats} | "
        f"torch threads {torch.get_num_threads()} |"
    )
    print("| phase | built-in | user (python) | user / built-in |")
    print("| --- | --- | --- | --- |")
    for key in ("sae_training", "scoring", "trial"):
        b, u = med["built-in"][key], med["user"][key]
        print(f"| {key} | {b:.2f} s | {u:.2f} s | {u / b:.2f}x |")
    print(
        f"| val worst group | {worst['built-in'][-1]:.4f} | {worst['user'][-1]:.4f} | "
        f"equal: {worst['built-in'] == worst['user']} |"
    )
    for name in studies:
        runs = "; ".join(
            f"{key} " + ", ".join(f"{t:.2f}" for t in times[name][key])
            for key in ("sae_training", "scoring", "trial")
        )
        print(f"{name} per run (s): {runs}")
    if args.out:
        import optuna

        record = {
            "command": " ".join(sys.argv),
            "revision": revision(),
            "seed": builtin.task.seed,
            "data_sha256": {n: c.data_sha256 for n, c in contexts.items()},
            "torch_threads": torch.get_num_threads(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "optuna": optuna.__version__,
            },
            "seconds": times,
            "val_worst_group": worst,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


def revision() -> str:
    """The checkout's commit (the script runs at two revisions)."""
    import subprocess

    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True, text=True
    )
    return out.stdout.strip()


def python_task(builtin: Any, task: dict[str, Any]) -> Any:
    """The `[task]` section naming this file's factory, with the built-in task's fields."""
    from hpo.tasks.python_factory import PythonTask

    return PythonTask(
        factory=f"{HERE}:make_task",
        options={"task": task},
        seed=builtin.task.seed,
        references=("last_layer", "leace"),
    )


if __name__ == "__main__":
    main()
