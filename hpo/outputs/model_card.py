"""README.md of an export: what was decomposed and removed, the numbers, how to load it.

Written from the trial's `TrialResult` and the task's own description of its model
(`Task.model_card`), so it reads the same for colored MNIST and for a user's model.
"""

from __future__ import annotations

from typing import Any

from hpo.debias.strategies.registry import get_strategy
from hpo.outputs.group_rows import select_groups
from hpo.params import TrialParams
from hpo.results import TrialResult
from hpo.tasks.base import ModelCard


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def accuracy_table(result: TrialResult) -> list[str]:
    """Markdown rows: one column per (model, split), worst group first."""
    cols = [(m, s) for m in result.model_names() for s in ("val", "test") if result.metric(m, s)]
    head = "| accuracy | " + " | ".join(f"{m.replace('_', ' ')} {s}" for m, s in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    val = [vm.groups for name in result.model_names() if (vm := result.metric(name, "val"))]
    groups = select_groups(result.group_names, val)
    rows = [("**worst group**", "worst_group"), ("mean group", "mean_group")]
    rows += [("overall", "overall"), *((g, g) for g in groups.listed)]
    for label, key in rows:
        cells = []
        for m, s in cols:
            metric = result.metric(m, s)
            cells.append(_pct(None if metric is None else metric.get(key)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, statistic in groups.rest_rows():
        cells = []
        for m, s in cols:
            metric = result.metric(m, s)
            cells.append(
                _pct(None if metric is None else groups.summarise(metric.groups, statistic))
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if groups.rest:
        lines += [
            "",
            f"Groups listed: the {len(groups.listed)} worst on validation; "
            "every group's numbers are in `metrics.json`.",
        ]
    return lines


def model_card(
    *,
    title: str,
    card: ModelCard,
    result: TrialResult,
    params: TrialParams,
    sae_configs: dict[str, dict[str, int]],
    prov: dict[str, Any],
) -> str:
    """The export's README.md: what was decomposed and removed, α, the numbers, how to
    load the model and the Faithful-SAEs, how to reproduce the trial."""
    lines = [f"# {title}", ""]
    if result.edit is None:
        lines += [
            f"Faithful-SAE decomposition of {card.summary} (no debiasing edit).",
            "",
            *(f"- {k}: {v:.4f}" for k, v in result.values().items()),
            "",
            "Files: `sae.pt`, `config.toml`, `config.json`, `metrics.json`.",
        ]
        return "\n".join(lines) + "\n"
    layers = list(result.edit.components)
    lines += [
        *_edit_section(card, result, params, sae_configs),
        "",
        *accuracy_table(result),
        "",
        "The sampler only ever saw validation numbers; test was scored once, at export.",
        "",
        *_load_section(card, layers),
        "",
        "## Reproduce",
        "",
        f"`hpo trial --config config.toml` retrains this trial (seed {prov['seed']}, data "
        f"sha256 `{str(prov['data_sha256'])[:12]}…`). Versions and checksums: `config.json`.",
        "",
    ]
    return "\n".join(lines)


def _edit_section(
    card: ModelCard,
    result: TrialResult,
    params: TrialParams,
    sae_configs: dict[str, dict[str, int]],
) -> list[str]:
    assert result.edit is not None
    edit = result.edit
    chosen = params.edit_config.model_copy(update=edit.plan.settings)
    how = get_strategy(edit.strategy).describe(chosen, card.concept_names)
    removal = edit.plan.removal
    weights = ", ".join(f"`{name}.weight`" for name in removal)
    return [
        f"{card.summary}, debiased by editing {weights}.",
        "",
        *(
            f"- **Decomposed:** the `{name}` weight "
            f"({sae_configs[name]['d_out']}×{sae_configs[name]['d_in']}), into "
            f"{params.n_components} rank-{params.rank} Faithful-SAE components (top-k "
            f"{params.top_k}); removed {removal[name].describe()}."
            for name in removal
        ),
        f"- **Which:** {how}; faithfulness error {result.errors['faithfulness_error']:.2e}"
        + (" (the largest over the layers)." if len(removal) > 1 else "."),
        f"- **α = {edit.alpha:.3g}** (chosen on validation): each edited weight ← "
        "W − α · Σ its removed components"
        + (", its bias moved by their mean contribution on probe" if params.ablate_bias else "")
        + ". Same architecture, same forward code.",
        *_controls_lines(result),
    ]


def _controls_lines(result: TrialResult) -> list[str]:
    """The label regime, and the lift over the controls: what the decomposition is worth."""
    labels = None if result.edit is None else result.edit.labels
    refs = result.compare_with()
    lines = []
    if labels is not None:
        used = "only the concept labels" if labels == "concept" else "group labels"
        lines.append(
            f"- **Labels:** the edit's fit used {used} of the probe split; compare it with {refs}."
        )
    lifts = {s: x for s in ("val", "test") if (x := result.lift(s)) is not None}
    if lifts:
        shown = ", ".join(f"{100 * x:+.1f} pts on {s}" for s, x in lifts.items())
        controls = ", ".join(c.removeprefix("control_") for c in result.controls())
        lines.append(
            f"- **Lift over the controls** (the same edit of decompositions that learnt "
            f"nothing: {controls}): {shown} (worst group)."
        )
    return lines


def _load_section(card: ModelCard, layers: list[str]) -> list[str]:
    weights = ", ".join(f"`{name}.weight`" for name in layers)
    return [
        "## Load it",
        "",
        f"The model is a `{card.class_name}`; `model.pt` is its state dict with the edited "
        f"{weights}.",
        "",
        "```python",
        "import torch",
        card.load,
        'model.load_state_dict(torch.load("model.pt", weights_only=True), strict=True)',
        "model.eval()",
        "```",
        "",
        *(
            [
                f"`hf/` is the same model as `save_pretrained` writes it: "
                f'`{card.pretrained}.from_pretrained("hf")` loads it, edit included.',
                "",
            ]
            if card.pretrained
            else []
        ),
        'The Faithful-SAE of each layer: `d = torch.load("sae.pt", weights_only=True)'
        f'["layers"]["{layers[0]}"]`, then `from hpo.sae.model import FaithfulSAE; '
        'sae = FaithfulSAE(**d["sae_config"]); sae.load_state_dict(d["sae"])`.',
    ]
