"""GET /v1/variants/compare: each served variant against its dense base, side by side.

Everything comes from the gateway's own counters and histograms (merged across workers)
and the registry's facts, so it agrees with what Prometheus and Grafana show.
"""

from app.metrics.exposition import Samples, histogram_quantile
from app.metrics.facts import VariantFacts

LOWER_IS_BETTER = ("ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s",
                   "dollars_per_million_tokens", "dollars_per_million_bytes", "bytes",
                   "parameters", "ppl_ratio", "bpb_ratio_pydoc", "bpb_ratio_news")  # fmt: skip


def variant_figures(name: str, samples: Samples, facts: VariantFacts | None) -> dict:
    ok = samples.sum("sparsegate_requests_total", variant=name, outcome="ok")
    total = samples.sum("sparsegate_requests_total", variant=name)
    completion = samples.sum("sparsegate_completion_tokens_total", variant=name)
    gen_s = samples.sum("sparsegate_generation_seconds_total", variant=name)
    streamed = samples.sum("sparsegate_streamed_completion_tokens_total", variant=name)
    cost = samples.sum("sparsegate_cost_dollars_total", variant=name)
    out_bytes = samples.sum("sparsegate_completion_bytes_total", variant=name)
    compared = samples.sum("sparsegate_shadow_requests_total", variant=name, outcome="compared")
    prefix_total = samples.sum("sparsegate_shadow_compared_tokens_total", variant=name)

    def q(metric: str, quantile: float) -> float | None:
        return histogram_quantile(quantile, samples.buckets(metric, variant=name))

    return {
        "variant": name,
        "requests": total,
        "errors": total - ok,
        "ppl_ratio": facts.ppl_ratio if facts else None,
        # bits per byte over the dense base's: in domain (pydoc), out of domain (news)
        **{f"bpb_ratio_{t}": facts.bpb_ratio.get(t) if facts else None for t in ("pydoc", "news")},
        "shadow_compared": compared,
        "shadow_exact_match_rate": (
            samples.sum("sparsegate_shadow_exact_matches_total", variant=name) / compared
            if compared else None
        ),
        "shadow_prefix_agreement": (
            samples.sum("sparsegate_shadow_common_prefix_tokens_total", variant=name)
            / prefix_total if prefix_total else None
        ),
        "ttft_p50_s": q("sparsegate_time_to_first_token_seconds", 0.5),
        "ttft_p95_s": q("sparsegate_time_to_first_token_seconds", 0.95),
        "itl_p50_s": q("sparsegate_inter_token_latency_seconds", 0.5),
        "itl_p95_s": q("sparsegate_inter_token_latency_seconds", 0.95),
        "tokens_per_s_per_stream": streamed / gen_s if gen_s else None,
        "completion_tokens": completion,
        "dollars_per_million_tokens": cost / completion * 1e6 if completion and cost else None,
        "completion_bytes": out_bytes,
        "dollars_per_million_bytes": cost / out_bytes * 1e6 if out_bytes and cost else None,
        "bytes": facts.bytes if facts else None,
        "parameters": facts.parameters if facts else None,
        "sparsity": facts.sparsity if facts else None,
    }  # fmt: skip


def compare(variants: list[str], samples: Samples, facts: dict[str, VariantFacts]) -> dict:
    rows = {v: variant_figures(v, samples, facts.get(v)) for v in variants}
    # A variant's dense base, if the gateway serves it: by registry name.
    served_by_registry = {f.registry_name: v for v, f in facts.items()}
    out = []
    for name, row in rows.items():
        f = facts.get(name)
        base = served_by_registry.get(f.base) if f else None
        row["base"] = f.base if f else None
        row["base_served_as"] = base
        row["is_base"] = bool(f and f.registry_name == f.base)
        ref = rows.get(base) if base else None
        row["ratio_to_base"] = {
            key: (row[key] / ref[key] if ref and row[key] is not None and ref[key] else None)
            for key in (*LOWER_IS_BETTER, "tokens_per_s_per_stream")
        }
        out.append(row)
    return {"object": "list", "data": out}
