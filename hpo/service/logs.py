"""How the `hpo` command logs: set up once by the CLI, never on import.

Importing a module of this package changes no logger, no verbosity and no warnings
filter: a notebook or a test that imports `hpo` keeps its own settings. The command
line (`hpo.cli.main`, which every `hpo worker` process also runs) calls
`configure_logging()` once.
"""

from __future__ import annotations

import logging
import warnings

import optuna

from hpo.errors import DivergedError
from hpo.service.objective import SurplusTrial
from hpo.storage import compat


class ExpectedFailures(logging.Filter):
    """Optuna logs every failed trial with its traceback. Three failures are expected and
    already explained by the trial's user attrs: a trial that lost the race for the
    budget's last slot (SurplusTrial: not logged at all), one stopped by Ctrl-C
    (KeyboardInterrupt: not logged, the worker says it in one line) and a diverged one
    (DivergedError: its one-line message, without the traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self._surplus: set[str] = set()  # "Trial N " prefixes of surplus trials

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(err, SurplusTrial | KeyboardInterrupt):
            self._surplus.add(message.split("failed", 1)[0])
            return False
        if isinstance(err, DivergedError):
            record.exc_info = None
        # Optuna's second line for a failed trial: "Trial N failed with value None."
        prefix = message.split("failed with value", 1)[0]
        if prefix in self._surplus:
            self._surplus.discard(prefix)
            return False
        return True


def configure_logging() -> None:
    """The command's logging: Optuna at WARNING (no line per trial), expected trial
    failures filtered (see ExpectedFailures), and no ExperimentalWarning for the Optuna
    features the service relies on (heartbeats, the gRPC proxy). Idempotent."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logger = compat.optimize_logger()
    if not any(isinstance(f, ExpectedFailures) for f in logger.filters):
        logger.addFilter(ExpectedFailures())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
