"""The edit strategies `params.ablate` may name. A new one is a module and one line here."""

from __future__ import annotations

from hpo.debias.strategies.attribution import Attribution
from hpo.debias.strategies.base import EditStrategy
from hpo.debias.strategies.both import Both
from hpo.debias.strategies.concept_fitted import ConceptFitted
from hpo.debias.strategies.conditioned import Conditioned
from hpo.debias.strategies.fitted import Fitted
from hpo.debias.strategies.saliency import Saliency
from hpo.registry import Registry

STRATEGIES: Registry[EditStrategy] = Registry("edit strategy")
for _strategy in (Conditioned(), Attribution(), Both(), Fitted(), ConceptFitted(), Saliency()):
    STRATEGIES.register(_strategy.name, _strategy)


def get_strategy(name: str) -> EditStrategy:
    return STRATEGIES.get(name)
