"""A study file written for two concept values, run on a task with more of them.

`ablate = "conditioned"` (and `"both"`) removes the latents conditioned on each concept
(`concept_latents` each); `max_components` caps how many components an edit removes in
all. A file tuned on colored MNIST's two colours (`max_components = 2`: "one latent per
colour") run on a five-valued attribute silently keeps three concepts' latents. This is
said once, before the work, as a warning naming the fields and the number that would
cover every concept; the budget itself stays what the file says.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpo.config import StudyFile
from hpo.search_spec import spec_extremes

CONDITIONED = ("conditioned", "both")  # strategies that remove the conditioned latents


def most_latents(study: StudyFile) -> int:
    """The most latents per concept a trial of the study may condition."""
    search = study.search
    if "concept_latents" in search:
        return int(max(spec_extremes(search["concept_latents"])))
    return study.params.concept_latents


def concept_budget_warnings(study: StudyFile, concept_names: Sequence[str]) -> list[str]:
    """One line per field whose edit budget falls short of the conditioned latents."""
    search, params = study.search, study.params
    ablates = set(spec_extremes(search["ablate"])) if "ablate" in search else {params.ablate}
    if not ablates & set(CONDITIONED) or not concept_names:
        return []
    latents = most_latents(study)
    needed = len(concept_names) * latents
    if "max_components" in search:
        budgets = [b for b in spec_extremes(search["max_components"]) if b is not None]
        field, budget = "search.max_components", min(budgets, default=None)
    else:
        field, budget = "params.max_components", params.max_components
    if budget is None or budget >= needed:
        return []
    names = ", ".join(concept_names)
    return [
        f"{field} = {budget} is fewer than the {needed} conditioned latents of this task's "
        f"{len(concept_names)} concepts ({names}) × {latents} (concept_latents): a "
        f"conditioned edit keeps {needed - budget} of them; raise it to {needed} to remove "
        "every concept's"
    ]


def too_few_components(study: StudyFile, concept_names: Sequence[str]) -> str | None:
    """Why the decomposition cannot hold this task's conditioned latents (SCAR: the first
    `concept_latents` latents per concept), or None: the smallest `n_components` the
    study may train against the most latents it may condition."""
    if not concept_names:
        return None
    search, params = study.search, study.params
    latents = most_latents(study)
    needed = len(concept_names) * latents
    if "n_components" in search:
        field, smallest = "search.n_components", min(spec_extremes(search["n_components"]))
    else:
        field, smallest = "params.n_components", params.n_components
    if smallest >= needed:
        return None
    return (
        f"{field} = {smallest} is fewer than the {needed} latents conditioned on this task's "
        f"{len(concept_names)} concepts × {latents} (concept_latents); valid: "
        f"n_components >= {needed}"
    )
