"""The human-readable view of one trial's result (the JSON view is the dict itself)."""

from __future__ import annotations

from typing import Any

MODEL_ORDER = ("original", "debiased", "oracle", "last_layer")
PHASES = ("data", "base_model", "activations", "sae_training", "scoring")


def _pct(x: float | None) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}"


def format_result(result: dict[str, Any]) -> str:
    head = (
        f"{result['task']['kind']} · seed {result['seed']} · data sha256 "
        f"{result['data_sha256'][:12]} · base model {result['base_model'][:12]}"
    )
    lines = [head]
    if "models" in result:
        lines += _group_table(result)
    else:
        lines.append(
            f"MMCS {result['mmcs']:.4f} · ML2R {result['ml2r']:.4f} · "
            f"faithfulness error {result['faithfulness_error']:.2e}"
        )
    t = result["timings"]
    lines.append(
        "time: " + " · ".join(f"{k.replace('_', ' ')} {t[k]:.1f} s" for k in PHASES if k in t)
    )
    return "\n".join(lines)


def _group_table(result: dict[str, Any]) -> list[str]:
    models = result["models"]
    splits = [s for s in ("val", "test") if s in models["original"]]
    cols = [(m, s) for m in MODEL_ORDER if m in models for s in splits]
    groups = list(models["original"]["val"]["groups"])
    width = max(12, *(len(g) for g in groups))
    top = " " * width + "".join(
        f"{m.replace('_', ' '):>{7 * len(splits)}}" for m in MODEL_ORDER if m in models
    )
    sub = " " * width + "".join(f"{s:>7}" for _, s in cols)
    lines = [
        f"alpha {result['alpha']:.2f} (chosen on val) · ablated components "
        f"{result['ablated_components']} · faithfulness error {result['faithfulness_error']:.2e}",
        top,
        sub,
    ]
    for g in groups:
        lines.append(
            f"{g:<{width}}" + "".join(f"  {_pct(models[m][s]['groups'][g])}" for m, s in cols)
        )
    for key, label in (
        ("worst_group", "worst group"),
        ("mean_group", "mean group"),
        ("overall", "overall"),
    ):
        lines.append(f"{label:<{width}}" + "".join(f"  {_pct(models[m][s][key])}" for m, s in cols))
    return lines
