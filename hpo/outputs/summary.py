"""What a person reads when a study stops: how far the best trial got, against what.

The original model's validation worst-group accuracy, the best feasible trial's, the
references beside it (last-layer retraining, LEACE, the oracle), a confirmed best if
`hpo confirm` ran, and the next commands. `hpo launch` prints it at the end, `hpo status`
on request. Validation numbers only: test belongs to the report and the export.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna
from optuna.trial import FrozenTrial

from hpo.results import CONTROL_PREFIX, REGIME_REFERENCES
from hpo.storage.records import (
    TrialRecord,
    read_confirmations,
    read_confirmed_best,
    read_trial,
)


def worst(groups: Mapping[str, float | None]) -> float | None:
    present = [v for v in groups.values() if v is not None]
    return min(present) if present else None


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    if len(study.directions) > 1:
        return None
    try:
        return study.best_trial  # Optuna's: feasible trials only
    except ValueError:
        return None


def study_summary(study: optuna.Study, storage_hint: str = "") -> list[str]:
    """Lines: the best trial against the original and the references, then what next."""
    lines: list[str] = []
    best = best_feasible(study)
    record = None if best is None else read_trial(best)
    if best is not None and record is not None and record.val_groups:
        lines += _validation_lines(best.number, record)
    elif best is not None:
        lines.append(f"best value {best.value:.4f} (trial {best.number})")
    confirmed = _confirmed_line(study)
    if confirmed is not None:
        lines.append(confirmed)
    if best is not None or len(study.directions) > 1:
        lines += _next_commands(study.study_name, storage_hint)
    return lines


def _validation_lines(number: int, record: TrialRecord) -> list[str]:
    """Worst-group accuracy on validation: original → best debiased, then the controls
    and the references beside it."""
    by_model = {m: worst(g) for m, g in record.val_groups.items()}
    original, debiased = by_model.pop("original", None), by_model.pop("debiased", None)
    lines = [
        f"validation worst-group accuracy: original {_pct(original)} → best debiased "
        f"{_pct(debiased)} (trial {number})"
    ]
    controls = {m: v for m, v in by_model.items() if m.startswith(CONTROL_PREFIX)}
    if controls:
        shown = ", ".join(
            f"{m.removeprefix(CONTROL_PREFIX)} {_pct(v)}" for m, v in controls.items()
        )
        lift = record.values.get("lift")
        lines.append(
            f"controls (the same edit, untrained decompositions): {shown}"
            + ("" if lift is None else f"; lift {100 * lift:+.1f} pts")
        )
    refs = {m: v for m, v in by_model.items() if m not in controls}
    if refs:
        shown = ", ".join(f"{m.replace('_', ' ')} {_pct(v)}" for m, v in refs.items())
        regime = None if record.edit is None else record.edit.labels
        label = ""
        if regime in REGIME_REFERENCES:
            have = [n for n in REGIME_REFERENCES[regime] if n in refs]
            compare = ", ".join(n.replace("_", " ") for n in have) or (
                f"{' or '.join(REGIME_REFERENCES[regime])}, not computed (task.references)"
            )
            label = f" (this edit used {regime} labels: compare with {compare})"
        lines.append(f"references on the same split: {shown}{label}")
    return lines


def _confirmed_line(study: optuna.Study) -> str | None:
    """The confirmed best (`hpo confirm`) with its spread over fresh seeds, if any."""
    confirmed = read_confirmed_best(study)
    if confirmed is None:
        return None
    confirmation = read_confirmations(study).get(confirmed.trial)
    spread = None if confirmation is None else confirmation.val.get(confirmed.objective)
    mean, std = (confirmed.mean, 0.0) if spread is None else (spread.mean, spread.std)
    return (
        f"confirmed best: trial {confirmed.trial}, {confirmed.objective} "
        f"{mean:.4f} ± {std:.4f} over {confirmed.seeds} fresh seeds"
    )


def _next_commands(name: str, storage_hint: str) -> list[str]:
    return [
        "next:",
        f"  hpo report {name}{storage_hint}      # one HTML file: val and test, figures",
        f"  hpo dashboard{storage_hint}          # browse trials, charts and notes",
        f"  hpo confirm {name}{storage_hint}     # re-run the best with fresh seeds",
        f"  hpo export {name}{storage_hint}      # best config + debiased weights -> models/",
    ]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"
