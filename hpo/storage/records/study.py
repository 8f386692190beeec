"""What the study itself stores that readers need without validating its whole file."""

from __future__ import annotations

import optuna

from hpo.storage.attrs import (
    STUDY_FILE_ATTR,
)


def sign(direction: optuna.study.StudyDirection) -> float:
    """+1 for an objective to maximize, −1 to minimize: sign × value, larger is better."""
    return 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0


def stored_objectives(study: optuna.Study) -> list[str]:
    """The objective names of the study file the study stored (none if it stored none):
    what labels its values, read without validating the whole file."""
    doc = study.user_attrs.get(STUDY_FILE_ATTR) or {}
    return list(doc.get("study", {}).get("objectives", []))
