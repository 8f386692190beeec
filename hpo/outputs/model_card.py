"""README.md of an export: what was decomposed and removed, the numbers, how to load it.

Written from the trial's `TrialResult` and the task's own description of its model
(`Task.model_card`), so it reads the same for colored MNIST and for a user's model.
"""

from __future__ import annotations

from typing import Any

from hpo.results import TrialResult


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def accuracy_table(result: TrialResult) -> list[str]:
    """Markdown rows: one column per (model, split), worst group first."""
    cols = [(m, s) for m in result.model_names() for s in ("val", "test") if result.metric(m, s)]
    head = "| accuracy | " + " | ".join(f"{m.replace('_', ' ')} {s}" for m, s in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    rows = [("**worst group**", "worst_group"), ("mean group", "mean_group")]
    rows += [("overall", "overall"), *((g, g) for g in result.group_names)]
    for label, key in rows:
        cells = []
        for m, s in cols:
            metric = result.metric(m, s)
            cells.append(_pct(None if metric is None else metric.get(key)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def model_card(
    *,
    title: str,
    card: dict[str, str],
    result: TrialResult,
    params: Any,
    sae_config: dict[str, int],
    concept_names: list[str],
    prov: dict[str, Any],
) -> str:
    lines = [f"# {title}", ""]
    edit = result.edit
    if edit is None:
        values = {**result.objectives, **result.errors}
        lines += [
            f"Faithful-SAE decomposition of {card['summary']} (no debiasing edit).",
            "",
            *(f"- {k}: {v:.4f}" for k, v in values.items()),
            "",
            "Files: `sae.pt`, `config.toml`, `config.json`, `metrics.json`.",
        ]
        return "\n".join(lines) + "\n"
    comps = ", ".join(str(c) for c in edit.components)
    how = (
        f"conditioned during training to fire for the concepts {', '.join(concept_names)}"
        if edit.selection == "conditioned"
        else f"the {len(edit.components)} whose contribution differs most between concepts "
        "(attribution)"
    )
    lines += [
        f"{card['summary']}, debiased by editing one weight.",
        "",
        f"- **Decomposed:** the `{edit.layer}` weight "
        f"({sae_config['d_out']}×{sae_config['d_in']}), into {params.n_components} "
        f"rank-{params.rank} Faithful-SAE components (top-k {params.top_k}; "
        f"faithfulness error {result.errors['faithfulness_error']:.2e}).",
        f"- **Removed:** component(s) {comps}, {how}.",
        f"- **α = {edit.alpha:.3g}** (chosen on validation): `{edit.layer}.weight` ← "
        "W − α · Σ removed components. Same architecture, same forward code.",
        "",
        *accuracy_table(result),
        "",
        "The sampler only ever saw validation numbers; test was scored once, at export.",
        "",
        "## Load it",
        "",
        f"The model is a `{card['class']}`; `model.pt` is its state dict with the edited "
        f"`{edit.layer}.weight`.",
        "",
        "```python",
        "import torch",
        card["load"],
        'model.load_state_dict(torch.load("model.pt", weights_only=True), strict=True)',
        "model.eval()",
        "```",
        "",
        'The Faithful-SAE: `d = torch.load("sae.pt", weights_only=True)`, then '
        '`from hpo.sae.model import FaithfulSAE; sae = FaithfulSAE(**d["sae_config"]); '
        'sae.load_state_dict(d["sae"])`.',
        "",
        "## Reproduce",
        "",
        f"`hpo trial --config config.toml` retrains this trial (seed {prov['seed']}, data "
        f"sha256 `{str(prov['data_sha256'])[:12]}…`). Versions and checksums: `config.json`.",
        "",
    ]
    return "\n".join(lines)
