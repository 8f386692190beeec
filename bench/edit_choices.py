"""Which edit settings the in-trial search chose, over every complete trial of the studies
in the given SQLite files, and how many trials reused the cached controls (0 s).

    .venv/bin/python bench/edit_choices.py STUDY.db [STUDY.db ...]
"""

from __future__ import annotations

import argparse
import collections
import json

import optuna

from hpo.storage.records import read_trial


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("databases", nargs="+")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    chosen: collections.Counter[str] = collections.Counter()
    complete = cached = 0
    for path in args.databases:
        url = f"sqlite:///{path}"
        for name in optuna.get_all_study_names(url):
            for trial in optuna.load_study(study_name=name, storage=url).trials:
                if trial.state.name != "COMPLETE":
                    continue
                record = read_trial(trial)
                settings = record.edit.plan.settings if record.edit else {}
                chosen[json.dumps(settings, sort_keys=True)] += 1
                complete += 1
                cached += record.timings.get("controls", 1.0) < 0.5
    print(f"{complete} complete trials; controls taken from the cache in {cached}")
    for settings, n in chosen.most_common():
        print(f"{n:4d}  {settings}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
