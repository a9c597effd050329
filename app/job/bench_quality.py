"""The quality table: one compression recipe per row, all against the same dense model.

Rows are ordinary registered variants (named `q-...`), so a rerun reuses the rows that
already exist and an interrupted run resumes where it stopped.
"""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from app.job.recipe import Recipe
from app.registry import Variant, open_registry

PRUNING = [
    ("50%", {"sparsity": 0.5}),
    ("2:4", {"pattern": "2:4"}),
    ("70%", {"sparsity": 0.7}),
]
# 70% of the MLP channels is as many parameters as 50% of all decoder linears in Gemma 3
# 270M (MLPs hold ~70% of them): the structured row at equal parameter count.
STRUCTURED = ("channels 70%", {"pattern": "channels", "sparsity": 0.7})
LORA_STEPS = 60
# KD at equal text: the same 60 calibration windows, 4 per step.
KD_BATCH = 4
KD_STEPS = LORA_STEPS // KD_BATCH
# Vocabulary trimming (rows of 262,144 kept): dense, then pruned and quantized under it.
TRIM = (98304, 65536)


def recipes(base: str, quick: bool) -> dict[str, tuple[str, Recipe]]:
    """Row name -> (parent, recipe). Each W8A8 row quantizes its pruned row, as a user would."""
    pruned: dict[str, tuple[str, Recipe]] = {}
    methods = ["wanda"] if quick else ["magnitude", "wanda", "sparsegpt"]
    for method in methods:
        for label, args in PRUNING[:2] if quick else PRUNING:
            name = f"q-{method}-{label.replace(':', 'of').rstrip('%')}"
            pruned[name] = (base, Recipe(prune=method, **args))
    pruned["q-channels70"] = (base, Recipe(prune="wanda", **STRUCTURED[1]))
    rows = {"q-w8a8": (base, Recipe(quant="w8a8")), **pruned}
    rows |= {f"{name}-w8a8": (name, Recipe(quant="w8a8")) for name in pruned}
    recovered = {
        f"q-{method}-50-lora": (
            base, Recipe(prune=method, sparsity=0.5, recover="lora", steps=LORA_STEPS)
        )
        for method in (["wanda"] if quick else ["wanda", "sparsegpt"])
    }  # fmt: skip
    kd = dict(recover="kd", steps=KD_STEPS, batch=KD_BATCH)
    for method in ["wanda"] if quick else ["sparsegpt"]:
        recovered[f"q-{method}-50-kd"] = (base, Recipe(prune=method, sparsity=0.5, **kd))
        recovered[f"q-{method}-50-kdfeat"] = (
            base, Recipe(prune=method, sparsity=0.5, feature_weight=1.0, **kd)
        )  # fmt: skip
    if not quick:
        recovered["q-sparsegpt-2of4-kd"] = (base, Recipe(prune="sparsegpt", pattern="2:4", **kd))
        recovered["q-channels50-kd"] = (
            base, Recipe(prune="wanda", pattern="channels", sparsity=0.5, **kd)
        )  # fmt: skip
    # The control: the same fine-tuning on the dense model (how much is recovery, how much
    # is adapting to the calibration text's domain).
    control = Recipe(recover="lora", steps=LORA_STEPS)
    trimmed = {f"q-trim{k // 1024}k": (base, Recipe(trim_vocab=k)) for k in TRIM}
    k = TRIM[0]
    trimmed[f"q-trim{k // 1024}k-w8a8"] = (f"q-trim{k // 1024}k", Recipe(quant="w8a8"))
    trimmed[f"q-trim{k // 1024}k-sparsegpt-50"] = (
        base,
        Recipe(trim_vocab=k, prune="sparsegpt", sparsity=0.5),
    )
    trimmed[f"q-trim{k // 1024}k-sparsegpt-50-w8a8"] = (
        f"q-trim{k // 1024}k-sparsegpt-50",
        Recipe(quant="w8a8"),
    )
    return rows | recovered | {"q-dense-lora": (base, control)} | trimmed


def run(base: str, home: Path, quick: bool, out: Path, console: Console) -> list[dict]:
    from app.job.compress import compress

    registry = open_registry(home)
    dense = registry.get(base)
    results = []
    for name, (parent, recipe) in recipes(base, quick).items():
        variant = registry.find(name) or compress(parent, recipe, home, name=name, console=console)
        shown = recipe
        if parent != base:  # a quantized row shows the pruning it inherits
            stored = registry.get(parent).recipe
            inherited = {k: v for k, v in stored.items() if k in Recipe.model_fields}
            inherited.pop("vocab_corpus", None)  # shown, not re-validated
            shown = Recipe.model_validate({**inherited, "quant": recipe.quant})
        results.append(_row(name, shown, variant, dense))
        out.write_text(json.dumps(results, indent=2))  # after every row: partial runs count
    _print(results, dense, console)
    console.print(f"results: {out}")
    return results


def _row(name: str, recipe: Recipe, v: Variant, dense: Variant) -> dict:
    return {
        "variant": name,
        "prune": recipe.prune,
        "pattern": recipe.pattern,
        "sparsity": recipe.sparsity,
        "quant": recipe.quant,
        "trim_vocab": recipe.trim_vocab,
        "bpb": v.quality["bpb"],
        "bpb_dense": v.quality["bpb_dense"],
        "bpb_ratio": v.quality["bpb_ratio"],
        "ppl": v.quality["ppl"],
        "ppl_dense": v.quality["ppl_dense"],
        "ppl_ratio": v.quality["ppl_ratio"],
        "params": v.param_count,
        "params_ratio": v.param_count / dense.param_count,
        "bytes": v.bytes_on_disk,
        "bytes_ratio": v.bytes_on_disk / dense.bytes_on_disk,
        "measured_sparsity": v.sparsity,
        "job_seconds": v.quality["job_seconds"],
        "recover": recipe.recover,
        "steps": recipe.steps if recipe.recover != "none" else None,
        "feature_weight": recipe.feature_weight,
        "before_recovery": v.quality.get("before_recovery"),
    }


def _print(rows: list[dict], dense: Variant, console: Console) -> None:
    table = Table(title=f"Quality against dense {dense.name}")
    left = ("variant", "vocab", "prune", "pattern", "quant")
    for col in (*left, "bits/byte pydoc", "×dense", "news", "×dense ", "ppl ×dense", "params",
                "bytes", "×bytes", "job s"):  # fmt: skip
        table.add_column(col, justify="left" if col in left else "right")
    for r in rows:
        table.add_row(
            r["variant"], f"{r['trim_vocab']:,}" if r["trim_vocab"] else "full",
            r["prune"] + ("" if r["recover"] == "none" else f"+{r['recover']}")
            + ("+feat" if r.get("feature_weight") else ""),
            "dense" if r["sparsity"] is None else f"{r['pattern']} {r['sparsity']:.0%}",
            r["quant"],
            f"{r['bpb']['pydoc']:.3f}", f"{r['bpb_ratio']['pydoc']:.3f}",
            f"{r['bpb']['news']:.3f}", f"{r['bpb_ratio']['news']:.3f}",
            "–" if r["ppl_ratio"] is None else f"{r['ppl_ratio']:.3f}",
            f"{r['params'] / 1e6:.1f} M",
            f"{r['bytes'] / 1e6:.0f} MB", f"{r['bytes_ratio']:.2f}", f"{r['job_seconds']:.0f}",
        )  # fmt: skip
    console.print(table)
