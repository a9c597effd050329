"""An async load generator for OpenAI-compatible completion servers (gateway or engine).

Every request streams, so TTFT and inter-token gaps are measured per token event as
`vllm bench serve` does; output lengths are fixed with `ignore_eos` so variants that stop
early do not look faster. The client is aiohttp's, as in `vllm bench serve`: it needs half
or less of httpx's CPU, which on a small machine the engine under test would lose.
"""

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from app.gateway.upstream import text_bytes


@dataclass
class Load:
    concurrency: int = 4
    requests: int = 32
    duration_s: float | None = None  # stop starting requests after this, if set
    prompt_words: int = 128
    output_tokens: int = 64
    # Words every prompt of a run starts with (a shared-prefix workload, which vLLM's
    # prefix cache serves faster); 0: every prompt is random from its first word.
    shared_prefix_words: int = 0
    # Prompts as exactly this many token ids drawn from `token_ids` (the length a tokenizer
    # gives is otherwise the engine's business): what `vllm bench serve --dataset-name
    # random` sends, for comparing the two.
    prompt_tokens: int | None = None
    token_ids: list[int] | None = None


@dataclass
class Outcome:
    ok: bool
    start: float
    ttft: float | None = None
    e2e: float | None = None
    gaps: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    output_bytes: int = 0
    error: str = ""
    variant: str = ""  # the gateway's x-sparsegate-variant: who served it

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (vLLM's definition)."""
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def _words() -> list[str]:
    from app.texts.corpus import pydoc_texts

    return sorted(set(" ".join(pydoc_texts("calibration")).split()))


def prompts(load: Load, count: int, seed: int) -> list[str] | list[list[int]]:
    """`count` distinct prompts drawn at random with `seed`: words of the documentation's
    calibration half (no tokenizer needed; the engine reports the real prompt token
    counts), or token ids. A new seed per run and per round, so no run is served from the
    prefix cache another one filled (the same prompts twice made TTFT p50 fall from 737
    to 206 ms)."""
    rng = random.Random(seed)
    out: dict = {}
    if load.prompt_tokens:
        ids = load.token_ids or []
        while len(out) < count:
            p = tuple(rng.choice(ids) for _ in range(load.prompt_tokens))
            out.setdefault(p, list(p))
        return list(out.values())
    words = _words()
    prefix = rng.choices(words, k=min(load.shared_prefix_words, load.prompt_words))
    while len(out) < count:
        text = " ".join(prefix + rng.choices(words, k=load.prompt_words - len(prefix)))
        out.setdefault(text, text)
    return list(out.values())


async def one_request(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    prompt: str | list[int],
    output_tokens: int,
    headers: dict,
) -> Outcome:
    body = {
        "model": model, "prompt": prompt, "max_tokens": output_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.perf_counter()
    out = Outcome(ok=False, start=start)
    last = None
    try:
        async with http.post(url, json=body, headers=headers) as r:
            out.variant = r.headers.get("x-sparsegate-variant", "")
            if r.status != 200:
                out.error = f"HTTP {r.status}: {(await r.read())[:200]!r}"
                return out
            async for raw in r.content:  # one line at a time
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("error"):
                    out.error = str(event["error"].get("message"))
                    return out
                now = time.perf_counter()
                if event.get("choices"):
                    out.output_bytes += text_bytes(event)
                    if last is None:
                        out.ttft = now - start
                    else:
                        out.gaps.append(now - last)
                    last = now
                if event.get("usage"):
                    out.prompt_tokens = event["usage"].get("prompt_tokens") or 0
                    out.output_tokens = event["usage"].get("completion_tokens") or 0
    except (aiohttp.ClientError, TimeoutError) as e:
        out.error = f"{type(e).__name__}: {e}"
        return out
    out.e2e = time.perf_counter() - start
    out.ok = out.ttft is not None
    return out


async def run_load(
    base_url: str,
    model: str,
    load: Load,
    *,
    seed: int,
    headers: dict | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Run `load` against one model with the prompts `seed` draws; returns the outcomes
    and the wall time."""
    texts = prompts(load, load.requests, seed)
    queue: asyncio.Queue = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    outcomes: list[Outcome] = []
    url = base_url.rstrip("/") + "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0)
    started = time.perf_counter()

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            if load.duration_s and time.perf_counter() - started > load.duration_s:
                return
            prompt = queue.get_nowait()
            result = await one_request(http, url, model, prompt, load.output_tokens, headers or {})
            outcomes.append(result)
            if on_done:
                on_done(result)

    connector = aiohttp.TCPConnector(limit=load.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(load.concurrency)))
    return outcomes, time.perf_counter() - started
