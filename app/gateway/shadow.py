"""Shadow traffic: copy a share of an alias's requests to a candidate, in the background.

The copy is sent after the user's response is complete, so the user never waits for it,
and streamed, so that it is timed as a streamed user request is (a rollout's latency gates
at its shadow step rest on these times). It is accounted apart (its own counters, never
the user's token counters; the engine's ledger charges it to the shadow account). The two
outputs are compared: exact match always, and for greedy requests the common prefix in
tokens (both texts tokenized by the candidate's engine). These are secondary figures: one
early divergence makes most tokens "disagree"; live quality in bits per byte
(app/gateway/quality.py) is the primary one.
"""

import asyncio
import logging

import aiohttp

from app.gateway.accounting import count_text
from app.gateway.upstream import BACKGROUND_FAILURES, Engine, streamed_copy
from app.metrics import definitions as m

log = logging.getLogger("sparsegate.shadow")


def is_greedy(body: dict) -> bool:
    return body.get("temperature") == 0 or body.get("top_k") == 1


class ShadowRunner:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        """pairs: (alias, candidate variant) for every alias that shadows."""
        self._tasks: set[asyncio.Task] = set()
        self.evidence = None  # a live rollout's evidence: each copy's outcome
        # Start every series at 0, so that "no exact match yet" reads 0%, not "no data".
        for labels in pairs:
            for counter in (m.SHADOW_EXACT, m.SHADOW_PREFIX_TOKENS, m.SHADOW_COMPARED_TOKENS,
                            m.SHADOW_TOKENS):  # fmt: skip
                counter.labels(*labels)
            for outcome in ("compared", "failed", "skipped"):
                m.SHADOW_REQUESTS.labels(*labels, outcome)

    def submit(self, alias: str, engine: Engine, route: str, body: dict, user_text: str) -> None:
        task = asyncio.create_task(self._run(alias, engine, route, body, user_text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)

    async def _run(self, alias: str, engine: Engine, route: str, body: dict, user_text: str):
        labels = (alias, engine.name)
        if engine.inflight >= engine.config.max_inflight:
            m.SHADOW_REQUESTS.labels(*labels, "skipped").inc()
            return
        served = engine.config.served_name or engine.name
        copy = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "user")}
        copy["model"] = served
        engine.enter()
        try:
            status, shadow_text, usage, timings = await streamed_copy(
                engine, route, copy, "shadow", alias
            )
        except BACKGROUND_FAILURES as e:
            log.info("shadow copy to %s failed: %s", engine.name, e)
            self._failed(labels)
            return
        finally:
            engine.leave()
        if status != 200:
            self._failed(labels, client_error=400 <= status < 500)
            return
        tokens = usage.get("completion_tokens") or 0
        if self.evidence is not None:
            self.evidence.request(alias, engine.name, False, timings, tokens)
        m.SHADOW_TOKENS.labels(*labels).inc((usage.get("prompt_tokens") or 0) + tokens)
        count_text(engine.name, usage, None, len(shadow_text.encode()))
        m.SHADOW_REQUESTS.labels(*labels, "compared").inc()
        if shadow_text == user_text:
            m.SHADOW_EXACT.labels(*labels).inc()
        if is_greedy(body):
            prefix, total = await _token_prefix(engine, served, user_text, shadow_text)
            if total is not None:
                m.SHADOW_PREFIX_TOKENS.labels(*labels).inc(prefix)
                m.SHADOW_COMPARED_TOKENS.labels(*labels).inc(total)

    def _failed(self, labels: tuple[str, str], client_error: bool = False) -> None:
        m.SHADOW_REQUESTS.labels(*labels, "failed").inc()
        if self.evidence is not None and not client_error:  # a 4xx: the request's fault
            self.evidence.request(*labels, failed=True)


async def _token_prefix(engine: Engine, served: str, a: str, b: str) -> tuple[int, int | None]:
    """(common prefix length, length of a) in tokens; (0, None) if tokenizing failed."""
    try:
        ids = []
        for text in (a, b):
            status, result = await engine.post_json(
                "/tokenize", {"model": served, "prompt": text, "add_special_tokens": False},
                "shadow",
            )  # fmt: skip
            if status != 200:
                return 0, None
            ids.append(result["tokens"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return 0, None
    prefix = 0
    for x, y in zip(ids[0], ids[1], strict=False):
        if x != y:
            break
        prefix += 1
    return prefix, len(ids[0])
