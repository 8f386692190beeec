"""What the study itself stores that readers need without validating its whole file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from hpo.storage.attrs import (
    STUDY_FILE_ATTR,
)


def sign(direction: optuna.study.StudyDirection) -> float:
    """+1 for an objective to maximize, −1 to minimize: sign × value, larger is better."""
    return 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0


def read_study_doc(study_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The study file a study stored when it was launched, as the document it stored
    (None: it stores none, e.g. a study another tool made). `study_attrs`: the study's
    user attrs (a Study's or a StudySummary's)."""
    doc = study_attrs.get(STUDY_FILE_ATTR)
    return dict(doc) if isinstance(doc, Mapping) else None


def write_study_doc(study: optuna.Study, doc: Mapping[str, Any]) -> None:
    """Store the study file a launch validated (passwords already masked)."""
    study.set_user_attr(STUDY_FILE_ATTR, dict(doc))


def stored_objectives(study: optuna.Study) -> list[str]:
    """The objective names of the study file the study stored (none if it stored none):
    what labels its values, read without validating the whole file."""
    doc = read_study_doc(study.user_attrs) or {}
    return list(doc.get("study", {}).get("objectives", []))
