"""One place where a finished user request becomes metrics (shadow copies never come here)."""

import itertools

from app.metrics import definitions as m
from app.metrics.cost import dollars

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
    busy_share_s: float = 0.0,
    price_per_hour: float = 0.0,
) -> None:
    labels = (variant or "none", alias or "none")
    m.REQUESTS.labels(*labels, route, outcome, str(status)).inc()
    if usage:
        m.PROMPT_TOKENS.labels(*labels).inc(usage.get("prompt_tokens") or 0)
        m.COMPLETION_TOKENS.labels(*labels).inc(usage.get("completion_tokens") or 0)
    if timings is not None and timings.output_bytes:
        m.COMPLETION_BYTES.labels(*labels).inc(timings.output_bytes)
    if busy_share_s and price_per_hour:
        m.COST.labels(*labels).inc(dollars(price_per_hour, busy_share_s))
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
