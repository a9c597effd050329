"""The quality table: one compression recipe per row, all against the same dense model.

Rows are ordinary registered variants (named `q-...`), so a rerun reuses the rows that
already exist and an interrupted run resumes where it stopped.
"""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from app.job.recipe import Recipe
from app.registry import Registry, Variant

PRUNING = [
    ("50%", {"sparsity": 0.5}),
    ("2:4", {"pattern": "2:4"}),
    ("70%", {"sparsity": 0.7}),
]
# 70% of the MLP channels is as many parameters as 50% of all decoder linears in Gemma 3
# 270M (MLPs hold ~70% of them): the structured row at equal parameter count.
STRUCTURED = ("channels 70%", {"pattern": "channels", "sparsity": 0.7})
LORA_STEPS = 100


def recipes(quick: bool) -> dict[str, Recipe]:
    rows: dict[str, Recipe] = {}
    methods = ["wanda"] if quick else ["magnitude", "wanda", "sparsegpt"]
    for quant in ("none", "w8a8"):
        suffix = "" if quant == "none" else "-w8a8"
        for method in methods:
            for label, args in PRUNING[:2] if quick else PRUNING:
                name = f"q-{method}-{label.replace(':', 'of').rstrip('%')}{suffix}"
                rows[name] = Recipe(prune=method, quant=quant, **args)
        rows[f"q-channels70{suffix}"] = Recipe(prune="wanda", quant=quant, **STRUCTURED[1])
    rows["q-wanda-50-lora"] = Recipe(prune="wanda", sparsity=0.5, recover="lora", steps=LORA_STEPS)
    return rows


def run(base: str, home: Path, quick: bool, out: Path, console: Console) -> list[dict]:
    from app.job.compress import compress

    registry = Registry(home)
    dense = registry.get(base)
    results = []
    for name, recipe in recipes(quick).items():
        variant = registry.find(name) or compress(base, recipe, home, name=name, console=console)
        results.append(_row(name, recipe, variant, dense))
    out.write_text(json.dumps(results, indent=2))
    _print(results, dense, console)
    console.print(f"results: {out}")
    return results


def _row(name: str, recipe: Recipe, v: Variant, dense: Variant) -> dict:
    return {
        "variant": name,
        "prune": recipe.prune.value,
        "pattern": recipe.pattern,
        "sparsity": recipe.sparsity,
        "quant": recipe.quant.value,
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
        "ppl_before_recovery": v.quality.get("ppl_before_recovery"),
    }


def _print(rows: list[dict], dense: Variant, console: Console) -> None:
    table = Table(title=f"Quality against dense {dense.name}")
    for col in (
        "variant",
        "prune",
        "pattern",
        "quant",
        "ppl",
        "×dense",
        "params",
        "bytes",
        "×bytes",
        "job s",
    ):
        table.add_column(
            col, justify="left" if col in ("variant", "prune", "pattern", "quant") else "right"
        )
    for r in rows:
        table.add_row(
            r["variant"], r["prune"] + ("+lora" if r["recover"] == "lora" else ""),
            f"{r['pattern']} {r['sparsity']:.0%}", r["quant"],
            f"{r['ppl']:.2f}", f"{r['ppl_ratio']:.3f}", f"{r['params'] / 1e6:.1f} M",
            f"{r['bytes'] / 1e6:.0f} MB", f"{r['bytes_ratio']:.2f}", f"{r['job_seconds']:.0f}",
        )  # fmt: skip
    console.print(table)
