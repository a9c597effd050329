"""The engines' own books, read by the gateway for the compare view and its derived metrics.

Each engine's /metrics holds its ledger (busy seconds, charges by account) and its step
sums. The gateway reads them as differences from what each engine showed when this gateway
process first read it, so the figures cover the same span as the gateway's own counters
(since it started); an engine that restarted since (its counters went back) counts from
its restart.

It also asks each engine once how its tokenizer reads a fixed text: variants whose engines
read it alike share a tokenizer, and equal work prices them at the tokens per byte of
their traffic together (app/metrics/compare.py).
"""

import asyncio
import hashlib
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from app.gateway.upstream import Engine
from app.metrics.equal_work import engine_totals
from app.metrics.exposition import Samples

# /metrics waits for the engines' books: an engine that does not answer in this long is left
# out of the figures rather than holding up every scrape.
READ_TIMEOUT_S = 1.0
# Prose, code, accents, CJK, an emoji, digits: tokenizers that differ read it differently.
FINGERPRINT_TEXT = "The quick brown fox; def f(x): return x ** 2  # café, 東京, 🙂 1234567"


class EngineBooks:
    def __init__(self, engines: dict[str, Engine]) -> None:
        self.engines = engines
        self._baseline: dict[str, dict[str, float]] = {}
        self.tokenizers: dict[str, str] = {}  # variant -> its tokenizer's fingerprint

    async def read(self) -> dict[str, dict[str, float] | None]:
        """variant -> totals since the baseline, or None where the engine did not answer."""
        names = list(self.engines)
        asked = [self._fingerprint(self.engines[n]) for n in names if n not in self.tokenizers]
        *found, _ = await asyncio.gather(*(self._read(self.engines[n]) for n in names),
                                         asyncio.gather(*asked))  # fmt: skip
        return dict(zip(names, found, strict=True))

    async def _fingerprint(self, engine: Engine) -> None:
        body = {"model": engine.config.served_name or engine.name, "prompt": FINGERPRINT_TEXT}
        try:
            asked = engine.post_json("/tokenize", body, "direct")
            status, answer = await asyncio.wait_for(asked, READ_TIMEOUT_S)
            ids = answer["tokens"] if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            ids = None
        if ids is not None:
            self.tokenizers[engine.name] = hashlib.sha256(json.dumps(ids).encode()).hexdigest()

    async def _read(self, engine: Engine) -> dict[str, float] | None:
        try:
            text = await engine.get_text("/metrics", READ_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError):
            return None
        samples = Samples()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.add(s.name, s.labels, s.value)
        now = engine_totals(samples)
        base = self._baseline.setdefault(engine.name, now)
        if any(now[k] < base.get(k, 0.0) for k in now):  # the engine restarted
            base = self._baseline[engine.name] = dict.fromkeys(now, 0.0)
        return {k: v - base.get(k, 0.0) for k, v in now.items()}
