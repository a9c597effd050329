"""`sparsegate bench soak`: N concurrent streams for T seconds through the gateway.

A stream counts as completed only if it ends with `data: [DONE]`, carries a usage event, and
that usage agrees with what arrived: as many completion tokens as were asked for (the load
sets `ignore_eos`) and no more token events than tokens. Anything else is lost, whatever its
HTTP status said. The gateway's resident memory is read from its own /metrics before and
after, so growth under sustained load shows."""

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from app.bench.load import Load, prompts
from app.bench.overhead import gateway_metric


@dataclass
class SoakResult:
    started: int = 0
    completed: int = 0
    lost: int = 0
    rejected_429: int = 0
    errors: Counter = field(default_factory=Counter)  # "HTTP 503", "event: ..." -> count
    lost_reasons: Counter = field(default_factory=Counter)
    fallbacks: int = 0  # requests a fallback variant answered
    variants: Counter = field(default_factory=Counter)
    completion_tokens: int = 0
    wall_s: float = 0.0
    gateway_rss_bytes_before: float | None = None
    gateway_rss_bytes_after: float | None = None

    def as_dict(self) -> dict:
        before, after = self.gateway_rss_bytes_before, self.gateway_rss_bytes_after
        return {
            # Shallow, counters as plain dicts (asdict would rebuild a Counter from pairs).
            **{k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()},
            "output_tokens_per_s": self.completion_tokens / self.wall_s if self.wall_s else 0.0,
            "gateway_rss_growth_bytes": after - before if None not in (before, after) else None,
        }


async def gateway_rss(url: str, headers: dict) -> float | None:
    """The gateway's resident memory (a single-worker gateway exports it)."""
    return await gateway_metric(url, "process_resident_memory_bytes", headers)


async def _one_stream(
    http: aiohttp.ClientSession, url: str, body: dict, headers: dict, result: SoakResult
) -> None:
    result.started += 1
    token_events, usage, done = 0, None, False
    try:
        async with http.post(f"{url}/v1/completions", json=body, headers=headers) as r:
            if r.status == 429:
                result.rejected_429 += 1
                return
            if r.status != 200:
                result.errors[f"HTTP {r.status}"] += 1
                return
            result.variants[r.headers.get("x-sparsegate-variant", "?")] += 1
            if int(r.headers.get("x-sparsegate-fallbacks", "0")):
                result.fallbacks += 1
            async for raw in r.content:
                line = raw.strip()
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("error"):
                        result.errors[f"event: {event['error'].get('code')}"] += 1
                    if event.get("choices"):
                        token_events += 1
                    if event.get("usage"):
                        usage = event["usage"]
    except (aiohttp.ClientError, TimeoutError) as e:
        result.lost += 1
        result.lost_reasons[type(e).__name__] += 1
        return
    tokens = (usage or {}).get("completion_tokens")
    if not done:
        reason = "no [DONE]"
    elif usage is None:
        reason = "no usage"
    elif tokens != body["max_tokens"] or not 0 < token_events <= tokens:
        reason = "usage does not match the stream"
    else:
        result.completed += 1
        result.completion_tokens += tokens
        return
    result.lost += 1
    result.lost_reasons[reason] += 1


async def run_soak(
    url: str,
    model: str,
    *,
    concurrency: int,
    duration_s: float,
    prompt_words: int,
    output_tokens: int,
    headers: dict | None = None,
) -> SoakResult:
    """Keep `concurrency` streams open for `duration_s`, then let the last ones finish."""
    url = url.rstrip("/")
    headers = headers or {}
    result = SoakResult()
    texts = prompts(Load(prompt_words=prompt_words), 64, random.randrange(1 << 30))
    counter = itertools.count()
    timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        result.gateway_rss_bytes_before = await gateway_rss(url, headers)
        started = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() - started < duration_s:
                i = next(counter)
                # A unique opening per request: no request is a prefix-cache hit of another.
                prompt = f"[{uuid.uuid4().hex[:12]}] {texts[i % len(texts)]}"
                body = {
                    "model": model, "prompt": prompt, "max_tokens": output_tokens,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                    "user": f"soak-{i}",
                }  # fmt: skip
                await _one_stream(http, url, body, headers, result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
        result.gateway_rss_bytes_after = await gateway_rss(url, headers)
    return result
