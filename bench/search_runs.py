"""Studies against the clock: time to target, and search quality per CPU-hour.

    # 6. cold start (empty model cache) to the first trial at the seed configuration's
    #    val worst-group accuracy, studies/colored_mnist.toml with 2 workers:
    HPO_DATA_DIR=../shared/data/mnist python bench/search_runs.py time-to-target \
        [--target 0.916] [--limit-min 20]

    # 7. TPE + median pruning against random search without pruning, run side by side,
    #    one single-threaded worker each (one core each: the same CPU budget), then the
    #    best val worst-group accuracy (and that trial's test accuracy, re-scored from its
    #    stored weights afterwards) at each checkpoint:
    HPO_DATA_DIR=../shared/data/mnist python bench/search_runs.py search-quality \
        [--minutes 60] [--checkpoints 30,60]

Each run makes fresh studies in a temporary SQLite file; the search sees validation
numbers only. Prints markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna

from hpo.outputs.rescore import rescore
from hpo.service.studies import load_study

STUDY = Path(__file__).resolve().parents[1] / "studies" / "colored_mnist.toml"
HPO = [sys.executable, "-m", "hpo"]
COMPLETE = optuna.trial.TrialState.COMPLETE
# Seed configuration's val worst-group accuracy (`hpo trial studies/colored_mnist.toml`).
SEED_VAL_WORST_GROUP = 0.916


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C to the process group, as a user would; the study stays resumable."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def best_by(study: optuna.Study, t0: float, seconds: float) -> optuna.trial.FrozenTrial | None:
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(COMPLETE,))
        if t.datetime_complete.timestamp() - t0 <= seconds
    ]
    return max(done, key=lambda t: t.values[0], default=None)


def time_to_target_once(target: float, limit_min: float, sampler_seed: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="hpo-bench-ttt-"))
    env = {**os.environ, "HPO_CACHE_DIR": str(folder / "cache")}  # cold: no base model
    url = f"sqlite:///{folder / 'ttt.db'}"
    name = f"ttt-{uuid.uuid4().hex[:6]}"
    cmd = [*HPO, "launch", str(STUDY), "--workers", "2", "--storage", url]
    cmd += ["--set", f"study.name={name}", "--set", "study.n_trials=1000"]
    cmd += ["--set", f"sampler.seed={sampler_seed}"]
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    hit = None
    try:
        while time.time() - t0 < limit_min * 60 and proc.poll() is None:
            time.sleep(2)
            try:
                study = load_study(name, url)
            except Exception:  # noqa: BLE001 - not created yet (base model still training)
                continue
            done = study.get_trials(deepcopy=False, states=(COMPLETE,))
            reached = [t for t in done if t.values[0] >= target]
            if reached:
                hit = min(reached, key=lambda t: t.datetime_complete)
                break
    finally:
        stop(proc)
    trials = load_study(name, url).get_trials(deepcopy=False)
    first = min((t.datetime_start for t in trials), default=None)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    if hit is not None:
        finished = [t for t in finished if t.datetime_complete <= hit.datetime_complete]
    return {
        "seed": sampler_seed,
        "setup": first.timestamp() - t0 if first else float("nan"),
        "minutes": (hit.datetime_complete.timestamp() - t0) / 60 if hit else None,
        "trial": hit.number if hit else None,
        "value": hit.values[0] if hit else None,
        "finished": len(finished),
    }


def time_to_target(args: argparse.Namespace) -> None:
    runs = [
        time_to_target_once(args.target, args.limit_min, int(seed))
        for seed in args.sampler_seeds.split(",")
    ]
    print(f"target: val worst-group >= {args.target:.3f}; limit {args.limit_min:.0f} min\n")
    print(
        "| sampler seed | cold start to first trial (data, base model) | time to target | "
        "trial (val worst-group) | trials finished by then |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in runs:
        reached = f"{r['minutes']:.1f} min" if r["minutes"] is not None else "not reached"
        which = f"{r['trial']} ({r['value']:.3f})" if r["trial"] is not None else "-"
        print(f"| {r['seed']} | {r['setup']:.0f} s | {reached} | {which} | {r['finished']} |")
    times = [r["minutes"] if r["minutes"] is not None else float("inf") for r in runs]
    print(f"\nmedian time to target: {statistics.median(times):.1f} min")


def search_quality(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hpo-bench-search-"))
    url = f"sqlite:///{folder / 'search.db'}"
    arms = {
        "TPE + median pruning": ["--set", "sampler.name=tpe"],
        "random, no pruning": [
            *("--set", "sampler.name=random", "--set", "pruner.name=none"),
            *("--set", "pruner.options={}"),
        ],
    }
    names = {arm: f"{i}-{uuid.uuid4().hex[:6]}" for i, arm in enumerate(arms)}
    for arm, extra in arms.items():  # create both studies (and the base model) first
        cmd = [*HPO, "launch", str(STUDY), "--workers", "0", "--storage", url, *extra]
        cmd += ["--set", f"study.name={names[arm]}", "--set", "study.n_trials=10000"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t0 = time.time()
    procs = [
        subprocess.Popen(
            [*HPO, "worker", "--study", names[arm], "--storage", url, "--threads", "1"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / f"{names[arm]}.log", "w"),  # noqa: SIM115
        )
        for arm in arms
    ]
    try:
        time.sleep(args.minutes * 60)
    finally:
        for p in procs:
            stop(p)
    checkpoints = [float(c) for c in args.checkpoints.split(",")]
    print(f"storage {url}; {args.minutes} min, 1 worker x 1 torch thread per arm, side by side\n")
    print(
        "| arm | minutes | trials complete / pruned / failed | best val worst-group | "
        "its test worst-group | best trial |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for arm in arms:
        study = load_study(names[arm], url)
        for minutes in checkpoints:
            cut = t0 + minutes * 60
            trials = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.datetime_complete and t.datetime_complete.timestamp() <= cut
            ]
            n = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
            best = best_by(study, t0, minutes * 60)
            if best is None:
                print(
                    f"| {arm} | {minutes:.0f} | {n['COMPLETE']} / {n['PRUNED']} / {n['FAIL']} "
                    "| - | - | - |"
                )
                continue
            test = rescore(study, url, best).result.metric("debiased", "test").worst_group
            print(
                f"| {arm} | {minutes:.0f} | {n['COMPLETE']} / {n['PRUNED']} / {n['FAIL']} | "
                f"{100 * best.values[0]:.1f} % | {100 * test:.1f} % | {best.number} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("time-to-target")
    t.add_argument("--target", type=float, default=SEED_VAL_WORST_GROUP)
    t.add_argument("--limit-min", type=float, default=20)
    t.add_argument("--sampler-seeds", default="0,1,2", help="one cold run per sampler seed")
    s = sub.add_parser("search-quality")
    s.add_argument("--minutes", type=float, default=60)
    s.add_argument("--checkpoints", default="30,60")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    {"time-to-target": time_to_target, "search-quality": search_quality}[args.bench](args)


if __name__ == "__main__":
    main()
