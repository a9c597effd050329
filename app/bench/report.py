"""Printing, saving and drawing bench results."""

import json
from pathlib import Path

from rich.table import Table


def _ms(v) -> str:
    return "–" if v is None else f"{v * 1000:.1f}"


def _x(v) -> str:
    return "" if v is None else f" ({v:.2f}×)"


# (label, formatter of a row); ratios to the baseline follow where they mean something.
def _f3(v) -> str:
    return "–" if v is None else f"{v:.3f}"


_LINES = [
    ("bits/byte ×dense, pydoc", lambda r: _f3(r.get("bpb_ratio_pydoc"))),
    ("bits/byte ×dense, news (out of domain)", lambda r: _f3(r.get("bpb_ratio_news"))),
    ("perplexity ×dense (same tokenizer)", lambda r: _f3(r.get("ppl_ratio"))),
    ("MB at rest", lambda r: "–" if r.get("bytes") is None else f"{r['bytes'] / 1e6:.0f}"),
    ("TTFT p50 ms", lambda r: _ms(r["ttft_p50_s"]) + _x(r["ratio_to_baseline"]["ttft_p50_s"])),
    ("TTFT p95 ms", lambda r: _ms(r["ttft_p95_s"])),
    ("TPOT p50 ms", lambda r: _ms(r["tpot_p50_s"]) + _x(r["ratio_to_baseline"]["tpot_p50_s"])),
    ("TPOT p95 ms", lambda r: _ms(r["tpot_p95_s"])),
    ("TPOT mean ms", lambda r: _ms(r.get("tpot_mean_s"))
        + _x(r["ratio_to_baseline"].get("tpot_mean_s"))),
    ("inter-token p50 ms", lambda r: _ms(r["itl_p50_s"]) + _x(r["ratio_to_baseline"]["itl_p50_s"])),
    ("inter-token p95 ms", lambda r: _ms(r["itl_p95_s"])),
    ("E2E p50 ms", lambda r: _ms(r["e2e_p50_s"]) + _x(r["ratio_to_baseline"]["e2e_p50_s"])),
    ("E2E p95 ms", lambda r: _ms(r["e2e_p95_s"])),
    ("output tokens/s", lambda r: f"{r['output_tokens_per_s']:.1f}"
        + _x(r["ratio_to_baseline"]["output_tokens_per_s"])),
    ("output bytes/s", lambda r: f"{r['output_bytes_per_s']:.0f}"
        + _x(r["ratio_to_baseline"].get("output_bytes_per_s"))),
    ("requests/s", lambda r: f"{r['requests_per_s']:.2f}"),
    ("goodput requests/s", lambda r: f"{r['goodput_requests_per_s']:.2f}"
        + _x(r["ratio_to_baseline"]["goodput_requests_per_s"])),
    ("errors", lambda r: f"{r['errors']} of {r['requests']}"),
    ("$ per M tokens", lambda r: "–" if r["dollars_per_million_tokens"] is None
        else f"{r['dollars_per_million_tokens']:.3f}"
        + _x(r["ratio_to_baseline"]["dollars_per_million_tokens"])),
    ("$ per M output bytes", lambda r: "–" if r.get("dollars_per_million_bytes") is None
        else f"{r['dollars_per_million_bytes']:.3f}"
        + _x(r["ratio_to_baseline"].get("dollars_per_million_bytes"))),
]  # fmt: skip

TEXTS = (("bpb_ratio_pydoc", "pydoc (in domain)", "#58c"),
         ("bpb_ratio_news", "news (out of domain)", "#c85"))  # fmt: skip


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (x) and quality loss (y)."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


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
        ("TPOT mean (ms)", [1000 * (r.get("tpot_mean_s") or 0) for r in rows]),
        ("output bytes/s", [r.get("output_bytes_per_s") or 0 for r in rows]),
        ("$ per M output bytes", [r.get("dollars_per_million_bytes") or 0 for r in rows]),
    ]
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(
        1, len(panels) + 1, figsize=(4 * len(panels) + 6, 4.2),
        gridspec_kw={"width_ratios": [1] * len(panels) + [1.8]},
    )  # fmt: skip
    _pareto(axes[-1], rows)
    for ax, (title, values) in zip(axes[:-1], panels, strict=True):
        colors = ["#7a8" if i == 0 else "#58c" for i in range(len(values))]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"sparsegate bench: {names[0]} (green) against its variants", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pareto(ax, rows: list[dict]) -> None:
    """Quality against cost: a point per variant and evaluation text, dense (the baseline)
    hollow, the Pareto front of each text dashed."""
    from matplotlib.lines import Line2D

    handles = []
    for field, label, color in TEXTS:
        pts = [(r["dollars_per_million_bytes"], r[field], r["variant"]) for r in rows
               if r.get("dollars_per_million_bytes") and r.get(field) is not None]  # fmt: skip
        if not pts:
            continue
        for x, y, name in pts:
            base = name == rows[0]["variant"]
            ax.scatter([x], [y], s=70 if base else 40, color="white" if base else color,
                       edgecolors=color, linewidths=2, zorder=3)  # fmt: skip
            ax.annotate(name + (" (dense)" if base else ""), (x, y), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        handles.append(Line2D([], [], marker="o", linestyle="", color=color, label=label))
        front = pareto_front([(x, y) for x, y, _ in pts])
        ax.plot(*zip(*front, strict=True), linestyle="--", color=color, linewidth=1)
    ax.set_xlabel("$ per M output bytes", fontsize=8)
    ax.set_ylabel("bits per byte × dense", fontsize=8)
    ax.set_title("quality against cost (lower left is better)", fontsize=10)
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white",
                          markeredgecolor="#555", label="dense"))  # fmt: skip
    ax.legend(handles=handles, fontsize=7)
