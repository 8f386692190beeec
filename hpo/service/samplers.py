"""Optuna's own samplers and pruners, configured from a study file (not re-implemented)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from hpo.config import PrunerSection, SamplerSection
from hpo.errors import UserError


def worker_seed(base: int, worker: str) -> int:
    """A distinct, reproducible seed per worker: workers sharing one seed propose the
    same configurations even with the constant liar."""
    digest = hashlib.sha256(f"{base}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


SamplerFactory = Callable[[int, bool, dict[str, Any]], optuna.samplers.BaseSampler]


def _tpe(seed: int, parallel: bool, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """Multivariate TPE; with several workers, the constant liar keeps them apart."""
    opts.setdefault("multivariate", True)
    opts.setdefault("constant_liar", parallel)
    return optuna.samplers.TPESampler(seed=seed, **opts)


def _seeded(cls: type[optuna.samplers.BaseSampler]) -> SamplerFactory:
    return lambda seed, parallel, opts: cls(seed=seed, **opts)


# sampler.name -> factory(seed, parallel, options). A new sampler is one entry here (and
# its name in hpo.config.SamplerSection); a name that is not here is an error.
SAMPLERS: dict[str, SamplerFactory] = {
    "tpe": _tpe,
    "random": _seeded(optuna.samplers.RandomSampler),
    "cmaes": _seeded(optuna.samplers.CmaEsSampler),
    "gp": _seeded(optuna.samplers.GPSampler),
    "nsgaii": _seeded(optuna.samplers.NSGAIISampler),
}

# pruner.name -> (Optuna pruner class, our defaults for its options).
PRUNERS: dict[str, tuple[type[optuna.pruners.BasePruner], dict[str, Any]]] = {
    "median": (optuna.pruners.MedianPruner, {}),
    "percentile": (optuna.pruners.PercentilePruner, {"percentile": 25.0}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {}),
    "hyperband": (optuna.pruners.HyperbandPruner, {}),
    "none": (optuna.pruners.NopPruner, {}),
}


def _unknown(section: str, name: str, known: dict[str, Any]) -> UserError:
    return UserError(f"{section}.name: unknown {section} {name!r}; use one of {', '.join(known)}")


def make_sampler(
    section: SamplerSection, *, seed: int, parallel: bool
) -> optuna.samplers.BaseSampler:
    factory = SAMPLERS.get(section.name)
    if factory is None:
        raise _unknown("sampler", section.name, SAMPLERS)
    opts: dict[str, Any] = dict(section.options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(seed, parallel, opts)
    except TypeError as err:
        raise UserError(f"sampler.options: {err} (sampler {section.name})") from None


def make_pruner(section: PrunerSection) -> optuna.pruners.BasePruner:
    if section.name not in PRUNERS:
        raise _unknown("pruner", section.name, PRUNERS)
    cls, defaults = PRUNERS[section.name]
    opts = {**defaults, **section.options}
    try:
        return cls(**opts)
    except (TypeError, ValueError) as err:
        raise UserError(f"pruner.options: {err} (pruner {section.name})") from None
