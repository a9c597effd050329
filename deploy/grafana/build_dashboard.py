"""Writes deploy/grafana/dashboards/: sparsegate.json, sparsegate-tenants.json and
sparsegate-rollouts.json (run it after editing the panels).

Every panel of the first groups by variant, so dense and pruned variants sit side by side;
`$dense` (a dashboard variable) names the dense base for the ratio panels. The second has
a row per tenant key (`$key`, repeated): its traffic, refusals, tokens and dollars. The
third shows rollouts: the candidate's share and step (gateways), its gates (controller).
"""

import json
from pathlib import Path

R = "[$__rate_interval]"


def rate(metric: str, by: str = "variant", where: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{where}}}{R}))"


def quantile(q: float, metric: str, where: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le, variant) (rate({metric}_bucket{{{where}}}{R})))"


def ratio_to_dense(expr_by_variant: str, expr_dense: str) -> str:
    return f"({expr_by_variant}) / on() group_left() ({expr_dense})"


TTFT = "sparsegate_time_to_first_token_seconds"
ITL = "sparsegate_inter_token_latency_seconds"
E2E = "sparsegate_request_duration_seconds"
DENSE = 'variant="$dense"'
# Cost comes from each engine's own ledger (every gateway worker and replica feeds it), in
# seconds; dollars are seconds x the price the gateway's deployment file gives.
PRICE = "max by (variant) (sparsegate_engine_price_dollars_per_hour)"
USER = 'account="user"'
RAW_PER_MBYTE = (
    rate("sparsegate_engine_charged_seconds_total", where=USER)
    + f" * on (variant) {PRICE} / 3600 / "
    + rate("sparsegate_completion_bytes_total")
    + " * 1e6"
)
LIVE_RATIO = (
    rate("sparsegate_quality_sums_total", "variant, alias", 'term="x"')
    + " / "
    + rate("sparsegate_quality_sums_total", "variant, alias", 'term="y"')
)

ERRORS = rate("sparsegate_requests_total", where='outcome!="ok"')
COMPARED = rate("sparsegate_shadow_requests_total", where='outcome="compared"')

# (title, unit, [(expr, legend)])
PANELS = [
    ("Requests per second by outcome", "reqps",
     [(rate("sparsegate_requests_total", "variant, outcome"), "{{variant}} {{outcome}}")]),
    ("Error ratio", "percentunit",
     [(f"{ERRORS} / {rate('sparsegate_requests_total')}", "{{variant}}")]),
    ("Time to first token (p50, p95)", "s",
     [(quantile(0.5, TTFT), "{{variant}} p50"), (quantile(0.95, TTFT), "{{variant}} p95")]),
    ("Inter-token latency (p50, p95)", "s",
     [(quantile(0.5, ITL), "{{variant}} p50"), (quantile(0.95, ITL), "{{variant}} p95")]),
    ("End-to-end latency (p50, p95)", "s",
     [(quantile(0.5, E2E), "{{variant}} p50"), (quantile(0.95, E2E), "{{variant}} p95")]),
    ("TTFT and inter-token p50, ratio to dense", "none",
     [(ratio_to_dense(quantile(0.5, TTFT), quantile(0.5, TTFT, DENSE).replace(
         "by (le, variant)", "by (le)")), "{{variant}} TTFT"),
      (ratio_to_dense(quantile(0.5, ITL), quantile(0.5, ITL, DENSE).replace(
          "by (le, variant)", "by (le)")), "{{variant}} inter-token")]),
    ("Completion tokens per second", "short",
     [(rate("sparsegate_completion_tokens_total"), "{{variant}}")]),
    ("Prompt tokens per second", "short",
     [(rate("sparsegate_prompt_tokens_total"), "{{variant}}")]),
    ("Tokens per second per stream", "short",
     [(f'{rate("sparsegate_streamed_completion_tokens_total")} / '
       f'{rate("sparsegate_generation_seconds_total")}', "{{variant}}")]),
    ("In-flight requests", "short",
     [("sum by (variant) (sparsegate_inflight_requests)", "{{variant}}")]),
    ("Engine busy share (its own ledger: time with a request in flight, any client)",
     "percentunit", [(rate("sparsegate_engine_busy_seconds_total"), "{{variant}}")]),
    ("Engine seconds charged per second, by account and outcome", "percentunit",
     [(rate("sparsegate_engine_charged_seconds_total", "variant, account, outcome"),
       "{{variant}} {{account}} {{outcome}}")]),
    ("Fallbacks", "short",
     [("sum by (alias, from_variant, to_variant) (increase(sparsegate_fallbacks_total"
       f"{R}))", "{{alias}}: {{from_variant}} -> {{to_variant}}")]),
    ("Dollars per million output bytes, equal work (the gateway's mean request, priced per "
     "variant)", "currencyUSD",
     [("max by (variant) (sparsegate_equal_work_dollars_per_million_output_bytes)",
       "{{variant}}")]),
    ("Equal-work cost, ratio to dense", "none",
     [("max by (variant) (sparsegate_equal_work_cost_ratio)", "{{variant}}")]),
    ("Dollars per million output bytes, raw (own traffic's charges over own output)",
     "currencyUSD", [(RAW_PER_MBYTE, "{{variant}}")]),
    ("Engine step time fit (fixed per step, per request, per prompt token, per output token)",
     "s",
     [("max by (variant, part) (sparsegate_step_cost_seconds)", "{{variant}} {{part}}")]),
    ("Machine dollars per million tokens (idle time included)", "currencyUSD",
     [("sum by (variant) (sparsegate_engine_price_dollars_per_hour) / 3600 / "
       f'{rate("sparsegate_completion_tokens_total")} * 1e6', "{{variant}}")]),
    ("Live bits per byte over the alias reference (since start: estimate and 95% interval)",
     "none", [("max by (variant, alias, bound) (sparsegate_live_bits_per_byte_ratio)",
               "{{variant}} {{alias}} {{bound}}")]),
    ("Live bits per byte over the alias reference (recent texts)", "none",
     [(LIVE_RATIO, "{{variant}} {{alias}}")]),
    ("Live quality samples per second, by outcome", "short",
     [(rate("sparsegate_quality_samples_total", "variant, outcome"), "{{variant}} {{outcome}}")]),
    ("Shadow agreement, secondary (common token prefix, exact match)", "percentunit",
     [(f'{rate("sparsegate_shadow_common_prefix_tokens_total")} / '
       f'{rate("sparsegate_shadow_compared_tokens_total")}', "{{variant}} prefix"),
      (f"{rate('sparsegate_shadow_exact_matches_total')} / {COMPARED}", "{{variant}} exact")]),
    ("Shadow tokens per second (apart from user traffic)", "short",
     [(rate("sparsegate_shadow_tokens_total"), "{{variant}}")]),
    ("Bits per byte, ratio to dense (registry; pydoc in domain, news out of domain)", "none",
     [("max by (variant, text) (sparsegate_variant_bits_per_byte_ratio)",
       "{{variant}} {{text}}")]),
    ("Perplexity ratio to dense (registry; variants with the dense tokenizer)", "none",
     [("max by (variant) (sparsegate_variant_perplexity_ratio)", "{{variant}}")]),
    ("Parameters (registry)", "short",
     [("max by (variant) (sparsegate_variant_parameters)", "{{variant}}")]),
    ("Bytes at rest (registry)", "bytes",
     [("max by (variant) (sparsegate_variant_bytes)", "{{variant}}")]),
    ("Sparsity (registry)", "percentunit",
     [("max by (variant) (sparsegate_variant_sparsity_ratio)", "{{variant}}")]),
    ("vLLM KV cache usage", "percentunit",
     [("max by (model_name) (vllm:kv_cache_usage_perc)", "{{model_name}}")]),
    ("vLLM requests running and waiting", "short",
     [("sum by (model_name) (vllm:num_requests_running)", "{{model_name}} running"),
      ("sum by (model_name) (vllm:num_requests_waiting)", "{{model_name}} waiting")]),
]  # fmt: skip


def panel(i: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": [
            {"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "prometheus"}}
            for j, (expr, legend) in enumerate(targets)
        ],
    }  # fmt: skip


KEY = 'key=~"$key"'
# (title, unit, [(expr, legend)]), in each tenant's row
TENANT_PANELS = [
    ("Requests per second by outcome (limited, over_budget: refused)", "reqps",
     [(rate("sparsegate_key_requests_total", "key, outcome", KEY), "{{outcome}}")]),
    ("Tokens per second (prompt, completion)", "short",
     [(rate("sparsegate_key_tokens_total", "key, kind", KEY), "{{kind}}")]),
    ("Dollars per hour (equal-work cost model)", "currencyUSD",
     [(rate("sparsegate_key_cost_dollars_total", "key", KEY) + " * 3600", "{{key}}")]),
    ("Share of requests refused by a limit or the budget", "percentunit",
     [(rate("sparsegate_key_requests_total", "key",
            KEY + ', outcome=~"limited|over_budget"') + " / "
       + rate("sparsegate_key_requests_total", "key", KEY), "{{key}}")]),
]  # fmt: skip


GATE = "sparsegate_rollout_gate"
# (title, unit, [(expr, legend)]), one row per alias with a rollout
ROLLOUT_PANELS = [
    ("Candidate's share of users (percent; 0 at shadow and after a rollback)", "percent",
     [("max by (alias) (sparsegate_rollout_weight_percent)", "{{alias}}")]),
    ("Step (0: the first)", "short",
     [("max by (alias) (sparsegate_rollout_step)", "{{alias}}")]),
    ("Gate estimates: bits-per-byte ratio, error-rate increase", "none",
     [(f"max by (alias, candidate, gate) ({GATE}_value)", "{{candidate}} {{gate}}")]),
    ("Gate confidence bounds on the tested mean (fails above 0 with bpb)", "none",
     [(f"max by (alias, candidate, gate) ({GATE}_low)", "{{gate}} low"),
      (f"max by (alias, candidate, gate) ({GATE}_high)", "{{gate}} high")]),
    ("Samples of the step", "short",
     [(f"max by (alias, candidate, gate) ({GATE}_samples)", "{{candidate}} {{gate}}")]),
    ("Verdicts (1 passed, 0 undecided, -1 failed)", "short",
     [(f"max by (alias, candidate, gate) ({GATE}_verdict)", "{{candidate}} {{gate}}")]),
]  # fmt: skip


def _board(uid: str, title: str, since: str, panels: list[dict], variables=None) -> dict:
    """A dashboard's frame (refreshed every 10 s), its panels and variables."""
    board = {"uid": uid, "title": title, "schemaVersion": 39, "version": 1, "refresh": "10s",
             "time": {"from": since, "to": "now"}}  # fmt: skip
    if variables is not None:
        board["templating"] = {"list": variables}
    return board | {"panels": panels}


def rollouts_dashboard() -> dict:
    """Rollouts as the gateways route them and as the controller judges them."""
    panels = [panel(i, *spec) for i, spec in enumerate(ROLLOUT_PANELS)]
    return _board("sparsegate-rollouts", "sparsegate: rollouts", "now-3h", panels)


def _datasource() -> dict:
    return {"type": "prometheus", "uid": "prometheus"}


def tenants_dashboard() -> dict:
    """One row per tenant key, repeated by Grafana over the `key` variable."""
    panels: list[dict] = [{
        "id": 1, "type": "row", "title": "tenant $key", "repeat": "key", "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "panels": [],
    }]  # fmt: skip
    for i, spec in enumerate(TENANT_PANELS):
        p = panel(i + 1, *spec)
        p["gridPos"] = {"h": 8, "w": 6, "x": 6 * i, "y": 1}
        panels.append(p)
    query = "label_values(sparsegate_key_requests_total, key)"
    keys = {
        "name": "key", "label": "tenant key", "type": "query", "datasource": _datasource(),
        "query": query, "definition": query, "refresh": 2, "multi": True, "includeAll": True,
        "current": {"text": "All", "value": "$__all"},
    }  # fmt: skip
    return _board("sparsegate-tenants", "sparsegate: tenants", "now-6h", panels, [keys])


def dashboard() -> dict:
    query = "label_values(sparsegate_variant_bits_per_byte_ratio, variant)"
    dense = {"name": "dense", "label": "dense base", "type": "query", "datasource": _datasource(),
             "query": query, "definition": query, "refresh": 2}  # fmt: skip
    panels = [panel(i, *p) for i, p in enumerate(PANELS)]
    return _board("sparsegate", "sparsegate: dense vs pruned", "now-30m", panels, [dense])


DASHBOARDS = {
    "sparsegate.json": dashboard,
    "sparsegate-tenants.json": tenants_dashboard,
    "sparsegate-rollouts.json": rollouts_dashboard,
}

if __name__ == "__main__":
    for name, build in DASHBOARDS.items():
        out = Path(__file__).parent / "dashboards" / name
        out.write_text(json.dumps(build(), indent=2) + "\n")
        print(f"wrote {out} ({len(build()['panels'])} panels)")
