"""`hpo status`: what is in a storage, at a glance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from hpo.errors import UserError
from hpo.storage import compat
from hpo.storage.attrs import BUDGET_ATTR
from hpo.storage.engine import mask, open_storage
from hpo.storage.records import read_trial
from hpo.storage.urls import storage_urls


@dataclass(frozen=True)
class StudyRow:
    """One study as `hpo status` shows it (`to_json` for `--json`)."""

    storage: str  # its URL, password masked
    study: str
    budget: int | None
    complete: int
    pruned: int
    failed: int
    interrupted: int
    running: int
    waiting: int
    best_value: float | None
    devices: dict[str, int]  # trials per device they ran on
    workers_alive: int
    summary: list[str] = field(default_factory=list)  # hpo.outputs.summary's lines

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


COUNTS = ("complete", "pruned", "failed", "interrupted", "running", "waiting")


def collect_status(
    cli_url: str | None,
    summary_of: str | None = None,
    summarize: Callable[[optuna.Study, str], list[str]] | None = None,
) -> list[StudyRow]:
    """One row per study; `summary_of` (or the only study) also gets the lines
    `summarize(study, storage hint)` gives (hpo.outputs.summary.study_summary)."""
    from hpo.service.studies import best_value, trial_counts

    rows = []
    storages = {u: open_storage(u, heartbeat=False, create=False) for u in storage_urls(cli_url)}
    named = {u: optuna.study.get_all_study_names(s) for u, s in storages.items()}
    if summary_of is not None and not any(summary_of in names for names in named.values()):
        known = sorted({n for names in named.values() for n in names})
        raise UserError(
            f"no study {summary_of!r} in storage; studies: {', '.join(known) or 'none'}"
        )
    only = sum(len(names) for names in named.values()) == 1
    for url, storage in storages.items():
        for name in named[url]:
            study = optuna.load_study(study_name=name, storage=storage)
            counts = trial_counts(study)
            hint = "" if cli_url is None else f" --storage '{mask(url)}'"
            wanted = summarize is not None and (only or name == summary_of)
            rows.append(
                StudyRow(
                    storage=mask(url),
                    study=name,
                    budget=study.user_attrs.get(BUDGET_ATTR),
                    **{k: counts[k] for k in COUNTS},
                    best_value=best_value(study),
                    devices=devices(study),
                    workers_alive=_alive(storage, study),
                    summary=summarize(study, hint) if summarize is not None and wanted else [],
                )
            )
    return rows


def devices(study: optuna.Study) -> dict[str, int]:
    """Trials per device they ran on ("cpu", "cuda:1"), for those that recorded one."""
    found = (read_trial(t).device for t in study.get_trials(deepcopy=False))
    return dict(sorted(Counter(d for d in found if d is not None).items()))


def _alive(storage: Any, study: optuna.Study) -> int:
    """Running trials whose heartbeat is fresh: one per live worker."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return 0
    if not compat.heartbeat_enabled(storage):
        storage = open_storage(storage.url)  # same URL, with heartbeat settings to judge
    stale = set(compat.stale_trial_ids(storage, compat.study_id(study)))
    return sum(1 for t in running if compat.trial_id(t) not in stale)


def format_status(rows: list[StudyRow]) -> str:
    if not rows:
        return "no studies"
    head = (
        f"{'study':<24} {'budget':>6} {'done':>5} {'pruned':>6} {'failed':>6} "
        f"{'interrupted':>11} {'running':>7} {'alive':>5}  {'best':<7} trials per device"
    )
    lines = [head]
    for r in rows:
        best = "-" if r.best_value is None else f"{r.best_value:.4f}"
        on = ", ".join(f"{d} {n}" for d, n in r.devices.items()) or "-"
        lines.append(
            f"{r.study:<24} {r.budget or '-':>6} {r.complete:>5} {r.pruned:>6} "
            f"{r.failed:>6} {r.interrupted:>11} {r.running:>7} "
            f"{r.workers_alive:>5}  {best:<7} {on}"
        )
    lines.append(f"storage: {', '.join(sorted({r.storage for r in rows}))}")
    for r in rows:
        if r.summary:
            lines += ["", f"{r.study}:", *r.summary]
    return "\n".join(lines)
