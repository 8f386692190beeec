"""A study file's edit budget against the task's concepts: a file written for two colours
(`max_components = 2`, "one latent per colour") warns on a five-valued attribute instead
of silently keeping three concepts' latents."""

from __future__ import annotations

from typing import Any

from hpo.service.concept_budget import concept_budget_warnings, too_few_components
from hpo.service.study_file import parse_study

FIVE = ("a", "b", "c", "d", "e")


def study(params: dict[str, Any], search: dict[str, Any] | None = None) -> Any:
    doc = {
        "study": {"name": "s", "objectives": ["mmcs"]},
        "task": {"kind": "toy_superposition"},
        "params": params,
        "search": search or {},
    }
    return parse_study(doc, "s.toml")


def test_two_latents_for_five_concepts_is_said_with_the_number_that_covers_them() -> None:
    (line,) = concept_budget_warnings(study({"max_components": 2}), FIVE)
    assert line.startswith("params.max_components = 2 is fewer than the 5 conditioned latents")
    assert "(a, b, c, d, e)" in line and "keeps 3 of them; raise it to 5" in line


def test_enough_budget_no_budget_or_another_strategy_says_nothing() -> None:
    assert concept_budget_warnings(study({"max_components": 2}), ("red", "green")) == []
    assert concept_budget_warnings(study({"max_components": 5}), FIVE) == []
    assert concept_budget_warnings(study({}), FIVE) == []
    assert concept_budget_warnings(study({"max_components": 2, "ablate": "fitted"}), FIVE) == []


def test_latents_per_concept_and_searched_budgets_count() -> None:
    (line,) = concept_budget_warnings(study({"max_components": 6, "concept_latents": 2}), FIVE)
    assert "10 conditioned latents" in line and "× 2 (concept_latents)" in line
    searched = study({}, {"max_components": {"low": 1, "high": 16}})
    (line,) = concept_budget_warnings(searched, FIVE)
    assert line.startswith("search.max_components = 1 is fewer")
    both = study({"ablate": "fitted"}, {"ablate": {"choices": ["fitted", "both"]}})
    assert concept_budget_warnings(both, FIVE) == []  # no budget: nothing is cut


def test_a_decomposition_smaller_than_its_conditioned_latents_is_refused() -> None:
    """SCAR conditions the first concept_latents latents per concept: 5 concepts × 2
    need 10 components, in [params] or at the smallest the search may sample."""
    why = too_few_components(study({"n_components": 8, "top_k": 2, "concept_latents": 2}), FIVE)
    assert why is not None and why.startswith("params.n_components = 8 is fewer than the 10")
    assert "valid: n_components >= 10" in why
    searched = study({"top_k": 2}, {"n_components": {"choices": [4, 64]}})
    assert (why := too_few_components(searched, FIVE)) and why.startswith("search.n_components = 4")
    assert too_few_components(study({"n_components": 10, "top_k": 2}), FIVE) is None
    assert too_few_components(study({"n_components": 1, "top_k": 1}), ()) is None
