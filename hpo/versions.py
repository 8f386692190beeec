"""Package versions recorded with every result."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("faithful-sae-hpo", "torch", "optuna", "numpy", "optuna-dashboard", "sqlalchemy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
