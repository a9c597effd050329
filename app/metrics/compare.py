"""GET /v1/variants/compare: each served variant against its dense base, side by side.

Latency, tokens and live quality come from the gateway's own counters and histograms
(merged across workers); cost from each engine's own ledger and step sums (read since this
gateway started, `app.gateway.engine_books`); quality at rest from the registry's facts.
"""

from app.metrics.equal_work import (
    ACCOUNTS,
    Mix,
    StepFit,
    dollars_per_million_output_bytes,
    reference_tokens,
    step_fit,
)
from app.metrics.exposition import Samples, histogram_quantile
from app.metrics.facts import VariantFacts
from app.texts.bpb import PairedSums

LOWER_IS_BETTER = ("ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s",
                   "equal_work_dollars_per_million_bytes", "raw_dollars_per_million_bytes",
                   "bytes", "parameters", "ppl_ratio", "bpb_ratio_pydoc",
                   "bpb_ratio_news")  # fmt: skip
QUALITY_TERMS = ("n", "x", "y", "xx", "yy", "xy")
QSUMS = "sparsegate_quality_sums_total"
COST_KEYS = ("engine_busy_s", "charged_s", "raw_dollars_per_million_bytes", "step_cost_s",
             "step_stalls", "step_batch", "step_prompt",
             "equal_work_dollars_per_million_bytes")  # fmt: skip


def variant_figures(name: str, samples: Samples, facts: VariantFacts | None) -> dict:
    ok = samples.sum("sparsegate_requests_total", variant=name, outcome="ok")
    total = samples.sum("sparsegate_requests_total", variant=name)
    completion = samples.sum("sparsegate_completion_tokens_total", variant=name)
    gen_s = samples.sum("sparsegate_generation_seconds_total", variant=name)
    streamed = samples.sum("sparsegate_streamed_completion_tokens_total", variant=name)
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
        "completion_bytes": out_bytes,
        **live_quality(name, samples),
        "bytes": facts.bytes if facts else None,
        "parameters": facts.parameters if facts else None,
        "sparsity": facts.sparsity if facts else None,
    }  # fmt: skip


def live_quality(name: str, samples: Samples) -> dict:
    """The candidate's live bits per byte over its alias's reference, on the reference's
    own responses (the alias with the most scored texts, if several)."""
    aliases = {lab["alias"] for lab, _ in samples.series(QSUMS)
               if lab.get("variant") == name}  # fmt: skip
    best, sums = None, PairedSums()
    for alias in sorted(aliases):
        found = PairedSums(
            **{t: samples.sum(QSUMS, variant=name, alias=alias, term=t) for t in QUALITY_TERMS}
        )
        if found.n > sums.n:
            best, sums = alias, found
    tokens = {t: samples.sum(QSUMS, variant=name, alias=best, term=t)
              for t in ("x_tokens", "y_tokens")} if best else {}  # fmt: skip
    ci = sums.interval()
    skipped = samples.sum("sparsegate_quality_samples_total", variant=name, outcome="skipped")
    failed = samples.sum("sparsegate_quality_samples_total", variant=name, outcome="failed")
    return {
        "live_bpb_ratio": sums.ratio, "live_bpb_ratio_ci95": list(ci) if ci else None,
        "live_bpb_samples": sums.n, "live_bpb_alias": best,
        "live_bpb_skipped": skipped, "live_bpb_failed": failed,
        # its tokens over the reference's on the same texts (a tokenizer's, not a text's)
        "live_tokens_ratio": (
            tokens["x_tokens"] / tokens["y_tokens"] if tokens.get("y_tokens") else None
        ),
    }  # fmt: skip


def reference_mix(samples: Samples, books: dict) -> Mix:
    ok = samples.sum("sparsegate_requests_total", outcome="ok")
    read = [b for b in books.values() if b]
    busy = sum(b["busy_s"] for b in read)
    return Mix(
        prompt_bytes=samples.sum("sparsegate_prompt_bytes_total") / ok if ok else 0.0,
        output_bytes=samples.sum("sparsegate_completion_bytes_total") / ok if ok else 0.0,
        inflight=sum(b["request_s"] for b in read) / busy if busy else 1.0,
        requests=ok,
    )


def own_rates(names: list[str], samples: Samples) -> dict[str, float]:
    """Tokens per byte of the texts these variants served (prompt, output), in their
    (shared) tokenizer."""
    rates = {}
    for part in ("prompt", "output"):
        n_bytes = sum(samples.sum("sparsegate_text_bytes_total", variant=n, part=part)
                      for n in names)  # fmt: skip
        if n_bytes:
            tokens = sum(samples.sum("sparsegate_text_tokens_total", variant=n, part=part)
                         for n in names)  # fmt: skip
            rates[part] = tokens / n_bytes
    return rates


def tokenizer_rates(
    variants: list[str], samples: Samples, tokenizers: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Each variant's tokens per byte on the traffic of every variant with its tokenizer:
    tokens per byte belong to a tokenizer and a text, so variants that share a tokenizer
    are priced on their traffic's texts together, not each on the texts it happened to
    get (identical engines, one given long prompts and the other chat, read 0.8-0.9x)."""
    out = {}
    for v in variants:
        mark = tokenizers.get(v)
        out[v] = own_rates([n for n in variants if mark and tokenizers.get(n) == mark] or [v],
                           samples)  # fmt: skip
    return out


def pricing_rates(
    row: dict, own: dict[str, dict[str, float]], references: dict[str, str]
) -> tuple[dict[str, float], str]:
    """Tokens per byte to price the reference request with, and where they come from. A
    candidate that live quality scores: its alias reference's rates (`own`: on the traffic
    of the reference's tokenizer) x the candidate's tokens over the reference's on the same
    sampled texts (what a variant writes is not the text it is priced on: a degenerate one
    would look cheap). Otherwise its rates on the traffic of its tokenizer."""
    ref, ratio = references.get(row.get("live_bpb_alias") or ""), row.get("live_tokens_ratio")
    if ref and ratio and "output" in own.get(ref, {}):
        return {part: rate * ratio for part, rate in own[ref].items()}, f"{ref} x same-text ratio"
    return own[row["variant"]], "traffic of its tokenizer"


def cost_figures(totals: dict | None, out_bytes: float, mix: Mix, price: float, rates: dict):
    """Cost from the engine's ledger: raw (charged to the variant's own user traffic, over
    its own output) and on equal work (the reference request priced by its step fit)."""
    if totals is None:  # the engine did not answer: its cost figures are unknown
        return {"engine_read": False, **dict.fromkeys(COST_KEYS)}
    fit = step_fit(totals)
    user_s = totals["charged.user"]
    return {
        "engine_read": True,
        "engine_busy_s": totals["busy_s"],
        "charged_s": {a: totals[f"charged.{a}"] for a in ACCOUNTS},
        "raw_dollars_per_million_bytes": (
            price * user_s / 3600 / out_bytes * 1e6 if price and out_bytes and user_s else None
        ),
        "step_cost_s": (
            {"fixed": fit.a, "per_request": fit.b_r, "per_prompt_token": fit.b_p,
             "per_output_token": fit.b_g, "steps": fit.steps} if fit else None
        ),
        "step_stalls": stalls(totals),
        "step_batch": batch_range(fit, mix.inflight) if fit else None,
        "step_prompt": prompt_range(fit, mix, rates) if fit else None,
        "equal_work_dollars_per_million_bytes": (
            dollars_per_million_output_bytes(fit, mix, rates, price) if fit else None
        ),
    }  # fmt: skip


def stalls(totals: dict) -> dict:
    """Time the engine's timed steps spent in stalls, left out of its fit
    (app/engines/step_costs.py), and their share of all timed step time."""
    stalled, timed = totals.get("stall_s", 0.0), totals.get("m.t", 0.0)
    return {"seconds": stalled, "share": stalled / (stalled + timed) if stalled else 0.0}


def batch_range(fit: StepFit, inflight: float) -> dict:
    """The batch sizes the fit rests on, and whether the priced concurrency lies outside
    them (mean +- 2 sd, and half a sequence): a straight line carried past the data, where
    step time grows faster than linearly with the batch on the CPU."""
    reach = 2 * fit.batch_sd + 0.5
    outside = abs(inflight - fit.batch_mean) > reach
    return {"mean": fit.batch_mean, "sd": fit.batch_sd, "extrapolated": outside}


def prompt_range(fit: StepFit, mix: Mix, rates: dict[str, float]) -> dict | None:
    """The prompt tokens per prefilling step the fit rests on, and whether the reference's
    prompt lies outside them (mean +- 2 sd, and half the mean): with prompts all of one
    size, b_p cannot tell a cost per token from a cost per request. None when no timed
    step prefilled."""
    if not fit.prompt_mean or "output" not in rates:
        return None
    priced, _ = reference_tokens(mix, rates)
    reach = max(2 * fit.prompt_sd, 0.5 * fit.prompt_mean)
    outside = abs(priced - fit.prompt_mean) > reach
    return {"mean": fit.prompt_mean, "sd": fit.prompt_sd, "priced": priced,
            "extrapolated": outside}  # fmt: skip


def compare(
    variants: list[str],
    samples: Samples,
    facts: dict[str, VariantFacts],
    books: dict[str, dict | None] | None = None,
    prices: dict[str, float] | None = None,
    workload: Mix | None = None,
    references: dict[str, str] | None = None,
    tokenizers: dict[str, str] | None = None,
) -> dict:
    """The rows, with equal work priced at the traffic's mean request or at `workload`
    (`references`: each live-quality alias's reference variant)."""
    books, prices = books or {}, prices or {}
    mix = workload or reference_mix(samples, books)
    rows = {v: variant_figures(v, samples, facts.get(v)) for v in variants}
    own = {v: own_rates([v], samples) for v in variants}
    shared = tokenizer_rates(variants, samples, tokenizers or {})
    for v, row in rows.items():
        rates, source = pricing_rates(row, shared, references or {})
        row.update(
            tokens_per_byte=own[v], pricing_tokens_per_byte=rates, tokens_per_byte_source=source
        )
        out_bytes = samples.sum("sparsegate_completion_bytes_total", variant=v)
        row.update(cost_figures(books.get(v), out_bytes, mix, prices.get(v, 0.0), rates))
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
    mix_out = {"prompt_bytes": mix.prompt_bytes, "output_bytes": mix.output_bytes,
               "inflight": mix.inflight, "requests": mix.requests}  # fmt: skip
    return {"object": "list", "data": out, "reference_mix": mix_out,
            "reference_mix_source": "query" if workload else "traffic"}  # fmt: skip
