"""The gateway's Prometheus metrics, labelled by variant (and alias where one applies).

Works with several gateway worker processes: `sparsegate serve --workers N` sets
PROMETHEUS_MULTIPROC_DIR before the workers import this module, and /metrics merges
their files (counters and histograms sum; gauges say how, through multiprocess_mode).
"""

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets for LLM serving. Inter-token gaps of a small pruned model on a GPU are
# a few milliseconds, so those buckets start at 0.5 ms (vLLM's own start at 10 ms).
INTER_TOKEN_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
TTFT_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

VA = ("variant", "alias")

REQUESTS = Counter(
    "sparsegate_requests",
    "Requests answered, by variant, alias, route, outcome and HTTP status",
    [*VA, "route", "outcome", "status"],
)
TTFT = Histogram(
    "sparsegate_time_to_first_token_seconds",
    "Time from the gateway receiving a request to the first generated token (streams)",
    VA,
    buckets=TTFT_BUCKETS,
)
INTER_TOKEN = Histogram(
    "sparsegate_inter_token_latency_seconds",
    "Gaps between consecutive streamed token events",
    VA,
    buckets=INTER_TOKEN_BUCKETS,
)
E2E = Histogram(
    "sparsegate_request_duration_seconds",
    "End-to-end latency of successful requests, as the gateway sees it",
    VA,
    buckets=E2E_BUCKETS,
)
PROMPT_TOKENS = Counter("sparsegate_prompt_tokens", "Prompt tokens of user requests", VA)
COMPLETION_TOKENS = Counter(
    "sparsegate_completion_tokens", "Completion tokens of user requests", VA
)
# Tokens are not a unit of text across variants whose tokenizers differ (a trimmed
# vocabulary spends more tokens on the same words): cost per byte of text compares them.
COMPLETION_BYTES = Counter(
    "sparsegate_completion_bytes", "UTF-8 bytes of generated text of user requests", VA
)
PROMPT_BYTES = Counter(
    "sparsegate_prompt_bytes",
    "UTF-8 bytes of the prompt text of successful user requests (text prompts; chat: the "
    "messages' text): with completion bytes, the traffic mix that equal work is priced on",
    VA,
)
TEXT_TOKENS = Counter(
    "sparsegate_text_tokens",
    "Tokens of texts whose bytes are counted in sparsegate_text_bytes (part: prompt, output)",
    ["variant", "part"],
)
TEXT_BYTES = Counter(
    "sparsegate_text_bytes",
    "Bytes of the texts counted in sparsegate_text_tokens: each variant's tokens per byte",
    ["variant", "part"],
)
GENERATION_SECONDS = Counter(
    "sparsegate_generation_seconds",
    "Seconds from first to last token of streamed requests (throughput's denominator)",
    VA,
)
STREAMED_TOKENS = Counter(
    "sparsegate_streamed_completion_tokens",
    "Completion tokens of streamed requests after their first (throughput's numerator)",
    VA,
)
INFLIGHT = Gauge(
    "sparsegate_inflight_requests",
    "Requests in flight to each engine",
    ["variant"],
    multiprocess_mode="livesum",
)
FALLBACKS = Counter(
    "sparsegate_fallbacks",
    "Requests served by another variant than the one routing chose first",
    ["alias", "from_variant", "to_variant"],
)
PRICE = Gauge(
    "sparsegate_engine_price_dollars_per_hour",
    "Configured price of the machine each variant's engine runs on",
    ["variant"],
    multiprocess_mode="max",
)

# Shadow traffic: accounted apart from user traffic, never in the counters above.
SHADOW_REQUESTS = Counter(
    "sparsegate_shadow_requests",
    "Shadow copies sent to a candidate variant, by outcome",
    ["alias", "variant", "outcome"],
)
SHADOW_EXACT = Counter(
    "sparsegate_shadow_exact_matches",
    "Shadow outputs identical to the user's response",
    ["alias", "variant"],
)
SHADOW_PREFIX_TOKENS = Counter(
    "sparsegate_shadow_common_prefix_tokens",
    "Tokens of the common prefix of shadow and user outputs (greedy requests)",
    ["alias", "variant"],
)
SHADOW_COMPARED_TOKENS = Counter(
    "sparsegate_shadow_compared_tokens",
    "Tokens of the user's output in greedy shadow comparisons (prefix agreement's denominator)",
    ["alias", "variant"],
)
QUALITY_SAMPLES = Counter(
    "sparsegate_quality_samples",
    "Live quality: responses of an alias's reference sampled for scoring under a candidate, "
    "by outcome (scored, failed, skipped: engines saturated or scoring at its bound)",
    ["alias", "variant", "outcome"],
)
COST_PROBES = Counter(
    "sparsegate_cost_probes",
    "Cost probe rounds (a carrier and a prompt of varied size, charged to the engine's probe "
    "account) that let the step-cost fit split a prefill's cost per request and per token, "
    "by outcome (sent, skipped: a round in flight or the engine at max_inflight, failed)",
    ["variant", "outcome"],
)
QUALITY_PENDING = Gauge(
    "sparsegate_quality_pending",
    "Live quality: sampled texts waiting for or under scoring",
    multiprocess_mode="livesum",
)
QUALITY_SUMS = Counter(
    "sparsegate_quality_sums",
    "Live quality sums over scored texts: x = the candidate's bits, y = the reference's bits "
    "on the same text, xx, yy, xy, n (texts), bytes, and x_tokens, y_tokens (each one's "
    "tokens of the same texts); bits per byte ratio = x / y",
    ["alias", "variant", "term"],
)
SHADOW_TOKENS = Counter(
    "sparsegate_shadow_tokens",
    "Prompt plus completion tokens spent on shadow copies",
    ["alias", "variant"],
)

# Registry facts, so that dashboards put quality next to speed.
_FACT_LABELS = ["variant", "base"]
VARIANT_PARAMETERS = Gauge(
    "sparsegate_variant_parameters", "Parameters of the variant", _FACT_LABELS,
    multiprocess_mode="max",
)  # fmt: skip
VARIANT_BYTES = Gauge(
    "sparsegate_variant_bytes", "Bytes of the variant at rest in the registry", _FACT_LABELS,
    multiprocess_mode="max",
)  # fmt: skip
VARIANT_SPARSITY = Gauge(
    "sparsegate_variant_sparsity_ratio", "Share of zero weights in the pruned layers",
    _FACT_LABELS, multiprocess_mode="max",
)  # fmt: skip
VARIANT_PPL_RATIO = Gauge(
    "sparsegate_variant_perplexity_ratio",
    "Held-out perplexity of the variant over its dense base's (1.0 for the base; only "
    "for variants with the base's tokenizer)",
    _FACT_LABELS,
    multiprocess_mode="max",
)
VARIANT_BPB_RATIO = Gauge(
    "sparsegate_variant_bits_per_byte_ratio",
    "Bits per byte of the variant over its dense base's on the same text (1.0 for the base); "
    "text: pydoc (in domain), news (out of domain)",
    [*_FACT_LABELS, "text"],
    multiprocess_mode="max",
)

# Per tenant key (app/gateway/tenancy.py): labelled by the key's name, never the key. One
# series per key name and outcome; past KEY_LABELS_MAX names a process counts the rest
# under "_other", so a mass of keys cannot grow the series without bound.
KEY_LABELS_MAX = 1000
KEY_REQUESTS = Counter(
    "sparsegate_key_requests",
    "Requests of each tenant key, by outcome: ok, invalid, engine_error, timeout, aborted, "
    "unavailable, forbidden (model outside its list), limited (rpm, tpm, max_inflight), "
    "over_budget",
    ["key", "outcome"],
)
KEY_TOKENS = Counter(
    "sparsegate_key_tokens", "Tokens served to each tenant key, by kind (prompt, completion)",
    ["key", "kind"],
)  # fmt: skip
KEY_OUTPUT_BYTES = Counter(
    "sparsegate_key_output_bytes", "Bytes of generated text served to each tenant key", ["key"]
)
KEY_DOLLARS = Counter(
    "sparsegate_key_cost_dollars",
    "Dollars of each tenant key's requests on the equal-work cost model: each request's "
    "tokens priced by its variant's step fit at the engine's mean concurrency x its price",
    ["key"],
)
KEY_UNPRICED = Counter(
    "sparsegate_key_unpriced_requests",
    "Tenant requests served before their variant's engine had a step fit (no dollars)",
    ["key"],
)
# Rollouts (app/gateway/rollout_sync.py), as each gateway process applies them.
ROLLOUT_WEIGHT = Gauge(
    "sparsegate_rollout_weight_percent",
    "Percent of the alias's users its latest rollout's candidate serves (0 at the shadow "
    "step and after a rollback, 100 once promoted; `rollout status` names the candidate)",
    ["alias"],
    multiprocess_mode="livemostrecent",
)
ROLLOUT_STEP = Gauge(
    "sparsegate_rollout_step",
    "The step the alias's latest rollout stands at (0: the first)",
    ["alias"],
    multiprocess_mode="livemostrecent",
)
# The rollout controller's gates (app/rollouts/controller.py), on its own /metrics.
_GATE = ["alias", "candidate", "gate"]
ROLLOUT_GATE_VALUE = Gauge(
    "sparsegate_rollout_gate_value",
    "Each gate's point estimate on the step's samples: bpb_ratio (candidate over reference), "
    "error_rate_increase (candidate minus reference)", _GATE,
)  # fmt: skip
ROLLOUT_GATE_LOW = Gauge(
    "sparsegate_rollout_gate_low",
    "Lower bound of the gate's confidence sequence on its tested mean (bpb: x - bound y)",
    _GATE,
)
ROLLOUT_GATE_HIGH = Gauge(
    "sparsegate_rollout_gate_high",
    "Upper bound of the gate's confidence sequence on its tested mean (bpb: x - bound y)",
    _GATE,
)
ROLLOUT_GATE_SAMPLES = Gauge(
    "sparsegate_rollout_gate_samples", "Samples of the step the gate rests on", _GATE
)
ROLLOUT_GATE_VERDICT = Gauge(
    "sparsegate_rollout_gate_verdict", "1 passed, 0 undecided, -1 failed", _GATE
)
LIMIT_STORE_ERRORS = Counter(
    "sparsegate_limit_store_errors",
    "Calls to the shared limit store (Redis) that failed; each request then passed or "
    "was refused as gateway.limits.on_store_error says",
    ["on_error"],
)
