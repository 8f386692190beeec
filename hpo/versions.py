"""Package versions recorded with every result, and those in the cache keys."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

RECORDED = (
    "faithful-sae-hpo",
    "torch",
    "optuna",
    "numpy",
    "scikit-learn",
    "optuna-dashboard",
    "sqlalchemy",
)
NUMERICS = ("torch", "numpy", "scikit-learn")  # the libraries a cached model's numbers come from


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **_versions(RECORDED)}


def numerics_versions() -> dict[str, str]:
    """The versions of the libraries whose arithmetic shapes a cached base model or
    bundle: part of their cache keys, so an upgrade recomputes them."""
    return _versions(NUMERICS)


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
