"""The edit strategies `params.ablate` may name. A new one is a module and one line here."""

from __future__ import annotations

from hpo.debias.strategies.attribution import Attribution
from hpo.debias.strategies.base import EditStrategy
from hpo.debias.strategies.both import Both
from hpo.debias.strategies.concept_fitted import ConceptFitted
from hpo.debias.strategies.conditioned import Conditioned
from hpo.debias.strategies.fitted import Fitted

STRATEGIES: dict[str, EditStrategy] = {
    s.name: s for s in (Conditioned(), Attribution(), Both(), Fitted(), ConceptFitted())
}


def get_strategy(name: str) -> EditStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown edit strategy {name!r}; valid: {', '.join(STRATEGIES)}"
        ) from None
