"""Printing, saving and drawing bench results."""

import json
from pathlib import Path

from rich.table import Table


def _ms(v) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


def _x(v) -> str:
    return "" if v is None else f" ({v:.2f}×)"


def table(rows: list[dict]) -> Table:
    t = Table(title=f"sparsegate bench (ratios to {rows[0]['baseline']})" if rows else "")
    for col in ("variant", "ppl ×", "MB", "TTFT p50/p95 ms", "TPOT p50/p95 ms",
                "ITL p50/p95 ms", "E2E p50/p95 ms", "tok/s", "req/s", "goodput req/s",
                "errors", "$/M tok"):  # fmt: skip
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        ratio = r["ratio_to_baseline"]
        t.add_row(
            r["variant"],
            "–" if r.get("ppl_ratio") is None else f"{r['ppl_ratio']:.3f}",
            "–" if r.get("bytes") is None else f"{r['bytes'] / 1e6:.0f}",
            f"{_ms(r['ttft_p50_s'])}/{_ms(r['ttft_p95_s'])}{_x(ratio['ttft_p50_s'])}",
            f"{_ms(r['tpot_p50_s'])}/{_ms(r['tpot_p95_s'])}{_x(ratio['tpot_p50_s'])}",
            f"{_ms(r['itl_p50_s'])}/{_ms(r['itl_p95_s'])}{_x(ratio['itl_p50_s'])}",
            f"{_ms(r['e2e_p50_s'])}/{_ms(r['e2e_p95_s'])}{_x(ratio['e2e_p50_s'])}",
            f"{r['output_tokens_per_s']:.1f}{_x(ratio['output_tokens_per_s'])}",
            f"{r['requests_per_s']:.2f}",
            f"{r['goodput_requests_per_s']:.2f}",
            str(r["errors"]),
            "–" if r["dollars_per_million_tokens"] is None
            else f"{r['dollars_per_million_tokens']:.2f}{_x(ratio['dollars_per_million_tokens'])}",
        )  # fmt: skip
    return t


def write_json(rows: list[dict], meta: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    tmp.replace(path)


def chart(rows: list[dict], path: Path) -> None:
    """Four panels, one bar per variant: TTFT, TPOT, throughput, cost (and quality)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    panels = [
        ("TTFT p50 (ms)", [1000 * (r["ttft_p50_s"] or 0) for r in rows]),
        ("TPOT p50 (ms)", [1000 * (r["tpot_p50_s"] or 0) for r in rows]),
        ("output tokens/s", [r["output_tokens_per_s"] for r in rows]),
        ("$ per M tokens", [r["dollars_per_million_tokens"] or 0 for r in rows]),
        ("perplexity ratio", [r.get("ppl_ratio") or 0 for r in rows]),
    ]
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, values) in zip(axes, panels, strict=True):
        colors = ["#7a8" if i == 0 else "#58c" for i in range(len(values))]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"sparsegate bench: {names[0]} (green) against its variants", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
