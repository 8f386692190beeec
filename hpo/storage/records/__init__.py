"""What a trial stores, written and read as typed objects: the one door to stored results.

A study outlives the code that wrote it, so every reader (status, notes, charts, the
report, export, confirm) goes through here and never parses user attrs itself:

- `write_result` stores a finished trial's `TrialResult` as user attrs (validation
  numbers only); `read_trial` gives them back as a `TrialRecord`.
- `TrialWeights` is the artifact a complete trial uploads: each layer's Faithful-SAE, the
  removal it made (re-applied as it was, never refitted) and the debiased state dict.
- `Confirmation` and `ConfirmedBest` are what `hpo confirm` stores in the study.

Every migration of an older stored layout sits in this module, next to the reader that
needs it.
"""

from __future__ import annotations

from hpo.storage.records.confirmations import (
    Confirmation,
    ConfirmationRun,
    ConfirmedBest,
    Spread,
    read_confirmations,
    read_confirmed_best,
    write_confirmation,
    write_confirmed_best,
)
from hpo.storage.records.study import sign, stored_objectives
from hpo.storage.records.trials import (
    TrialRecord,
    downsample,
    read_trial,
    write_provenance,
    write_result,
)
from hpo.storage.records.weights import StoredSAE, TrialWeights, download_weights, upload_weights

__all__ = [
    "Confirmation",
    "ConfirmationRun",
    "ConfirmedBest",
    "Spread",
    "StoredSAE",
    "TrialRecord",
    "TrialWeights",
    "download_weights",
    "downsample",
    "read_confirmations",
    "read_confirmed_best",
    "read_trial",
    "sign",
    "stored_objectives",
    "upload_weights",
    "write_confirmation",
    "write_confirmed_best",
    "write_provenance",
    "write_result",
]
