"""`hpo trial` quiet vs next to a busy neighbour, side by side (issue 11, "Under load").

A busy neighbour is one `python -c "while True: pass"` process per core, started before
the timed run and killed after it. Each configuration runs `hpo trial STUDY --json` in a
fresh process (the base model is cached by an untimed first run) and records the wall
time of the process and the trial's SAE-training time; quiet and busy runs alternate,
so a drift in the machine's background load hits both alike.

Configurations (torch threads, OpenMP waiting):
- `before`: what `hpo trial` did before: torch's default of one thread per core of the
  machine, and OpenMP's default waiting (spin about 3 ms, then sleep), which is what it
  gets when torch is loaded before `hpo` can set OMP_WAIT_POLICY (done here);
- `before-1-thread`: the same with `--threads 1` (as OMP_NUM_THREADS=1 did);
- `hpo`: `hpo trial` with no flag: the usable cores (hpo.cpus) and OMP_WAIT_POLICY=PASSIVE
  set by the command before torch loads;
- `hpo-1-thread`: the same with `--threads 1`.

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/under_load.py \
        studies/colored_mnist_quick.toml --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "before": {"threads": os.cpu_count() or 1, "torch_first": True},
    "before-1-thread": {"threads": 1, "torch_first": True},
    "hpo": {"threads": None, "torch_first": False},
    "hpo-1-thread": {"threads": 1, "torch_first": False},
}
# `python -m hpo`, with torch loaded first: OpenMP then starts with the environment as is.
TORCH_FIRST = (
    "import runpy, sys, torch; sys.argv[0] = 'hpo'; runpy.run_module('hpo', run_name='__main__')"
)


def run_trial(study: str, overrides: list[str], threads: int | None, torch_first: bool) -> dict:
    launcher = ["-c", TORCH_FIRST] if torch_first else ["-m", "hpo"]
    cmd = [sys.executable, *launcher, "trial", study, "--json", "--no-test"]
    cmd += [a for o in overrides for a in ("--set", o)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "MKL_"))}
    started = time.perf_counter()
    out = subprocess.run(cmd, env=full, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    return {
        "wall": wall,
        "sae": result["timings"]["sae_training"],
        "threads": result.get("torch_threads"),
    }


class Neighbour:
    """One busy-looping process per core, for the length of a `with` block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Neighbour:
        code = "while True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default="studies/colored_mnist_quick.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy loops")
    parser.add_argument("--json-out", type=Path, help="also write the raw runs here")
    args = parser.parse_args()
    configs = args.configs.split(",")

    run_trial(args.study, args.overrides, 1, False)  # caches the data and base model
    runs: list[dict] = []
    for rep in range(args.repeats):
        for name in configs:
            cfg = CONFIGS[name]
            for load in ("quiet", "busy"):
                if load == "busy":
                    with Neighbour(args.busy):
                        r = run_trial(
                            args.study, args.overrides, cfg["threads"], cfg["torch_first"]
                        )
                else:
                    r = run_trial(args.study, args.overrides, cfg["threads"], cfg["torch_first"])
                r.update(config=name, load=load, repeat=rep)
                runs.append(r)
                print(
                    f"{name:>10} {load:>5} rep {rep}: wall {r['wall']:6.1f} s, "
                    f"SAE {r['sae']:6.1f} s, torch threads {r['threads']}",
                    file=sys.stderr,
                    flush=True,
                )
    if args.json_out:
        args.json_out.write_text(json.dumps(runs, indent=1))

    print(
        f"\n{args.study} {' '.join(args.overrides)}; {os.cpu_count()} cores, "
        f"busy neighbour = {args.busy} loops; medians of {args.repeats}\n"
    )
    print(
        "| configuration | threads | quiet wall (s) | busy wall (s) | busy / quiet | "
        "quiet SAE (s) | busy SAE (s) | busy / quiet |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in configs:
        med = {}
        for load in ("quiet", "busy"):
            sel = [r for r in runs if r["config"] == name and r["load"] == load]
            med[load] = {k: statistics.median(r[k] for r in sel) for k in ("wall", "sae")}
            threads = sel[0]["threads"]
        print(
            f"| {name} | {threads} | {med['quiet']['wall']:.1f} | {med['busy']['wall']:.1f} | "
            f"{med['busy']['wall'] / med['quiet']['wall']:.2f} | {med['quiet']['sae']:.1f} | "
            f"{med['busy']['sae']:.1f} | {med['busy']['sae'] / med['quiet']['sae']:.2f} |"
        )


if __name__ == "__main__":
    main()
