"""Printing, saving and drawing bench results."""

import json
from pathlib import Path

from rich.table import Table


def _ms(v) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


def _x(v) -> str:
    return "" if v is None else f" ({v:.2f}×)"


# (label, formatter of a row); ratios to the baseline follow where they mean something.
_LINES = [
    ("perplexity ×dense", lambda r: "–" if r.get("ppl_ratio") is None else f"{r['ppl_ratio']:.3f}"),
    ("MB at rest", lambda r: "–" if r.get("bytes") is None else f"{r['bytes'] / 1e6:.0f}"),
    ("TTFT p50 ms", lambda r: _ms(r["ttft_p50_s"]) + _x(r["ratio_to_baseline"]["ttft_p50_s"])),
    ("TTFT p95 ms", lambda r: _ms(r["ttft_p95_s"])),
    ("TPOT p50 ms", lambda r: _ms(r["tpot_p50_s"]) + _x(r["ratio_to_baseline"]["tpot_p50_s"])),
    ("TPOT p95 ms", lambda r: _ms(r["tpot_p95_s"])),
    ("inter-token p50 ms", lambda r: _ms(r["itl_p50_s"]) + _x(r["ratio_to_baseline"]["itl_p50_s"])),
    ("inter-token p95 ms", lambda r: _ms(r["itl_p95_s"])),
    ("E2E p50 ms", lambda r: _ms(r["e2e_p50_s"]) + _x(r["ratio_to_baseline"]["e2e_p50_s"])),
    ("E2E p95 ms", lambda r: _ms(r["e2e_p95_s"])),
    ("output tokens/s", lambda r: f"{r['output_tokens_per_s']:.1f}"
        + _x(r["ratio_to_baseline"]["output_tokens_per_s"])),
    ("requests/s", lambda r: f"{r['requests_per_s']:.2f}"),
    ("goodput requests/s", lambda r: f"{r['goodput_requests_per_s']:.2f}"
        + _x(r["ratio_to_baseline"]["goodput_requests_per_s"])),
    ("errors", lambda r: f"{r['errors']} of {r['requests']}"),
    ("$ per M tokens", lambda r: "–" if r["dollars_per_million_tokens"] is None
        else f"{r['dollars_per_million_tokens']:.3f}"
        + _x(r["ratio_to_baseline"]["dollars_per_million_tokens"])),
]  # fmt: skip


def table(rows: list[dict]) -> Table:
    """One column per variant (the baseline first), one line per figure: side by side."""
    t = Table(title=f"sparsegate bench (ratios to {rows[0]['baseline']})" if rows else "")
    t.add_column("figure")
    for r in rows:
        t.add_column(r["variant"], justify="right", overflow="fold")
    for label, fmt in _LINES:
        t.add_row(label, *(fmt(r) for r in rows))
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
