"""Optuna's own samplers and pruners, configured from a study file (not re-implemented)."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import optuna

from hpo.config import PrunerSection, SamplerSection
from hpo.errors import UserError


def worker_seed(base: int, worker: str) -> int:
    """A distinct, reproducible seed per worker: workers sharing one seed propose the
    same configurations even with the constant liar."""
    digest = hashlib.sha256(f"{base}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(
    section: SamplerSection, *, seed: int, parallel: bool
) -> optuna.samplers.BaseSampler:
    opts: dict[str, Any] = dict(section.options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if section.name == "tpe":
                opts.setdefault("multivariate", True)
                opts.setdefault("constant_liar", parallel)
                return optuna.samplers.TPESampler(seed=seed, **opts)
            if section.name == "random":
                return optuna.samplers.RandomSampler(seed=seed, **opts)
            if section.name == "cmaes":
                return optuna.samplers.CmaEsSampler(seed=seed, **opts)
            if section.name == "gp":
                return optuna.samplers.GPSampler(seed=seed, **opts)
            return optuna.samplers.NSGAIISampler(seed=seed, **opts)
    except TypeError as err:
        raise UserError(f"sampler.options: {err} (sampler {section.name})") from None


def make_pruner(section: PrunerSection) -> optuna.pruners.BasePruner:
    opts = dict(section.options)
    kinds = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    if section.name == "percentile":
        opts.setdefault("percentile", 25.0)
    try:
        return kinds[section.name](**opts)
    except (TypeError, ValueError) as err:
        raise UserError(f"pruner.options: {err} (pruner {section.name})") from None
