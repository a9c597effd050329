"""Figures of one load run, as `vllm bench serve` defines them, plus cost and goodput."""

from dataclasses import asdict, dataclass

import numpy as np

from app.bench.load import Outcome


@dataclass
class Slo:
    ttft_s: float = 2.0
    tpot_s: float = 0.2


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(
    variant: str,
    outcomes: list[Outcome],
    wall_s: float,
    *,
    slo: Slo,
    price_per_hour: float | None,
) -> dict:
    ok = [o for o in outcomes if o.ok]
    ttft = [o.ttft for o in ok]
    tpot = [o.tpot for o in ok if o.tpot is not None]
    itl = [g for o in ok for g in o.gaps]
    e2e = [o.e2e for o in ok]
    out_tokens = sum(o.output_tokens for o in ok)
    out_bytes = sum(o.output_bytes for o in ok)
    good = [o for o in ok if o.ttft <= slo.ttft_s and (o.tpot is None or o.tpot <= slo.tpot_s)]
    row = {
        "variant": variant,
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "wall_s": wall_s,
        "prompt_tokens": sum(o.prompt_tokens for o in ok),
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / wall_s if wall_s else 0.0,
        "output_bytes": out_bytes,
        "output_bytes_per_s": out_bytes / wall_s if wall_s else 0.0,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "goodput_requests_per_s": len(good) / wall_s if wall_s else 0.0,
        "slo": asdict(slo),
        "price_per_hour": price_per_hour,
        # The machine is paid for the whole run: dollars = price x wall time.
        "dollars_per_million_tokens": (
            price_per_hour * wall_s / 3600 / out_tokens * 1e6
            if price_per_hour and out_tokens else None
        ),
        # Per unit of text: variants whose tokenizers differ spend different numbers of
        # tokens on the same text, so $ per token would flatter the one that spends more.
        "dollars_per_million_bytes": (
            price_per_hour * wall_s / 3600 / out_bytes * 1e6
            if price_per_hour and out_bytes else None
        ),
        "tpot_mean_s": float(np.mean(tpot)) if tpot else None,
        "first_error": next((o.error for o in outcomes if not o.ok), ""),
    }  # fmt: skip
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        for q in (50, 95, 99):
            row[f"{name}_p{q}_s"] = _pct(values, q)
    return row


RATIO_KEYS = ("ttft_p50_s", "tpot_p50_s", "tpot_mean_s", "itl_p50_s", "e2e_p50_s",
              "output_tokens_per_s", "output_bytes_per_s", "goodput_requests_per_s",
              "dollars_per_million_tokens", "dollars_per_million_bytes")  # fmt: skip


def add_ratios(rows: list[dict], baseline: str) -> None:
    ref = next((r for r in rows if r["variant"] == baseline), None)
    for row in rows:
        row["baseline"] = baseline
        row["ratio_to_baseline"] = {
            k: (row[k] / ref[k] if ref and row.get(k) is not None and ref.get(k) else None)
            for k in RATIO_KEYS
        }
