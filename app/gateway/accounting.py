"""One place where a finished user request becomes metrics (shadow copies never come here)."""

import itertools

from app.metrics import definitions as m

# outcome label values
OK, ENGINE_ERROR, ABORTED, TIMEOUT = "ok", "engine_error", "aborted", "timeout"
REJECTED, UNAVAILABLE, INVALID = "rejected", "unavailable", "invalid"


def record_request(
    *,
    variant: str,
    alias: str,
    route: str,
    outcome: str,
    status: int,
    timings=None,
    usage: dict | None = None,
    prompt: str | None = None,
) -> None:
    """The engine's own ledger (app/engines/ledger.py) books the request's cost; here the
    gateway counts what it saw: requests, tokens, bytes of text, latencies."""
    labels = (variant or "none", alias or "none")
    m.REQUESTS.labels(*labels, route, outcome, str(status)).inc()
    if usage:
        m.PROMPT_TOKENS.labels(*labels).inc(usage.get("prompt_tokens") or 0)
        m.COMPLETION_TOKENS.labels(*labels).inc(usage.get("completion_tokens") or 0)
    if timings is not None and timings.output_bytes:
        m.COMPLETION_BYTES.labels(*labels).inc(timings.output_bytes)
    if outcome == OK and usage:
        prompt_bytes = len(prompt.encode()) if prompt is not None else None
        if prompt_bytes:
            m.PROMPT_BYTES.labels(*labels).inc(prompt_bytes)
        count_text(variant, usage, prompt_bytes, timings.output_bytes if timings else 0)
    if timings is None or outcome != OK:
        return
    if timings.end is not None:
        m.E2E.labels(*labels).observe(timings.end - timings.start)
    if timings.first_token is not None:
        m.TTFT.labels(*labels).observe(timings.first_token - timings.start)
    events = timings.token_events
    if len(events) > 1:
        itl = m.INTER_TOKEN.labels(*labels)
        for before, after in itertools.pairwise(events):
            itl.observe(after - before)
        m.GENERATION_SECONDS.labels(*labels).inc(events[-1] - events[0])
        streamed = (usage or {}).get("completion_tokens") or len(events)
        m.STREAMED_TOKENS.labels(*labels).inc(max(streamed - 1, 0))


def count_text(variant: str, usage: dict, prompt_bytes: int | None, output_bytes: int) -> None:
    """Tokens and bytes of the texts this variant served, in its tokenizer: its tokens per
    byte on its own traffic, which turns a reference request in bytes into its tokens."""
    parts = (("prompt", usage.get("prompt_tokens"), prompt_bytes),
             ("output", usage.get("completion_tokens"), output_bytes))  # fmt: skip
    for part, tokens, n_bytes in parts:
        if tokens and n_bytes:
            m.TEXT_TOKENS.labels(variant, part).inc(tokens)
            m.TEXT_BYTES.labels(variant, part).inc(n_bytes)
