"""Live quality: a sampled share of an alias's traffic, scored in bits per byte.

For a response the alias's reference served, once the user has it whole, the gateway asks
the reference and each candidate of the alias for the log-probability of every token of
the same text (prompt + response; vLLM's `prompt_logprobs`, one generated token). Each
model reads the text with its own tokenizer, so the unit is the text's bytes: the
candidate's bits per byte over the reference's, on text the reference wrote, is
(entropy + KL) / entropy on the service's real traffic, the same unit as the job's report.

Scoring never delays or fails a user's request: it runs in the background, `MAX_SCORING`
texts at a time per gateway process with at most `MAX_PENDING` waiting, and a sample is
skipped (and counted) past that bound or when an engine is at its `max_inflight`. The sums
it keeps add across workers and replicas (`app.texts.bpb.PairedSums`).
"""

import asyncio
import logging
import random

import aiohttp

from app.gateway.config import Deployment, quality_plans
from app.gateway.upstream import Engine
from app.metrics import definitions as m
from app.texts.bpb import bits

log = logging.getLogger("sparsegate.quality")
MAX_SCORING = 2
MAX_PENDING = 16
SCORED, FAILED, SKIPPED = "scored", "failed", "skipped"


class QualitySampler:
    def __init__(self, deployment: Deployment, engines: dict[str, Engine], rng=None) -> None:
        self.engines = engines
        self.rng = rng or random.Random()
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None  # made in the event loop, on first use
        self.evidence = None  # a live rollout's evidence: each sample's bits
        self.retarget(deployment)

    def retarget(self, deployment: Deployment) -> None:
        """Plans from the aliases as they are routed now (a rollout may move them)."""
        self.plans = quality_plans(deployment)
        for alias, plan in self.plans.items():
            for candidate in plan.candidates:
                for outcome in (SCORED, FAILED, SKIPPED):
                    m.QUALITY_SAMPLES.labels(alias, candidate, outcome)

    def samples(self, alias: str, served_by: str) -> bool:
        """Whether responses of this variant on this alias may be sampled."""
        plan = self.plans.get(alias)
        return bool(plan and plan.reference == served_by and plan.fraction > 0)

    def maybe_score(self, alias: str, served_by: str, text: str) -> None:
        if not self.samples(alias, served_by) or not text:
            return
        plan = self.plans[alias]
        if self.rng.random() >= plan.fraction:
            return
        if len(self._tasks) >= MAX_SCORING + MAX_PENDING:
            for candidate in plan.candidates:
                m.QUALITY_SAMPLES.labels(alias, candidate, SKIPPED).inc()
            return
        task = asyncio.create_task(self._score(alias, text))
        self._tasks.add(task)
        m.QUALITY_PENDING.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        m.QUALITY_PENDING.dec()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)

    async def _score(self, alias: str, text: str) -> None:
        self._slots = self._slots or asyncio.Semaphore(MAX_SCORING)
        async with self._slots:
            await self._score_now(alias, text)

    async def _score_now(self, alias: str, text: str) -> None:
        plan = self.plans.get(alias)
        if plan is None:  # the alias stopped sampling (a rollout ended) while this waited
            return
        reference = self.engines[plan.reference]
        ready = [c for c in plan.candidates if not _saturated(self.engines[c])]
        for c in set(plan.candidates) - set(ready):
            m.QUALITY_SAMPLES.labels(alias, c, SKIPPED).inc()
        if not ready:
            return
        if _saturated(reference):
            for c in ready:
                m.QUALITY_SAMPLES.labels(alias, c, SKIPPED).inc()
            return
        ref = await text_bits(reference, text, alias)
        n_bytes = len(text.encode())
        for candidate in ready:
            cand = None if ref is None else await text_bits(self.engines[candidate], text, alias)
            if cand is None or ref is None:
                m.QUALITY_SAMPLES.labels(alias, candidate, FAILED).inc()
                continue
            m.QUALITY_SAMPLES.labels(alias, candidate, SCORED).inc()
            (x, x_tokens), (y, y_tokens) = cand, ref
            if self.evidence is not None:
                self.evidence.quality(alias, candidate, x, y)
            for term, value in (("x", x), ("y", y), ("xx", x * x), ("yy", y * y),
                                ("xy", x * y), ("n", 1), ("bytes", n_bytes),
                                ("x_tokens", x_tokens), ("y_tokens", y_tokens)):  # fmt: skip
                m.QUALITY_SUMS.labels(alias, candidate, term).inc(value)


def _saturated(engine: Engine) -> bool:
    return engine.inflight >= engine.config.max_inflight


async def text_bits(engine: Engine, text: str, alias: str) -> tuple[float, int] | None:
    """The text's bits under the engine's model (every token after the first; the engine
    adds BOS where its tokenizer has one) and its tokens in the engine's tokenizer, or None,
    logged, if the engine refused."""
    body = {
        "model": engine.config.served_name or engine.name, "prompt": text, "max_tokens": 1,
        "prompt_logprobs": 0, "temperature": 0, "return_token_ids": True,
    }  # fmt: skip
    engine.enter()
    try:
        status, result = await engine.post_json("/v1/completions", body, "quality", alias)
        if status != 200:
            raise ValueError(f"answered {status}: {str(result)[:200]}")
        choice = result["choices"][0]
        return bits(_nll(choice)), len(choice["prompt_logprobs"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, IndexError) as e:
        log.warning("quality scoring on %s failed: %s", engine.name, e)
        return None
    finally:
        engine.leave()


def _nll(choice: dict) -> float:
    """Nats of the prompt tokens from a completion choice's prompt_logprobs."""
    entries = choice["prompt_logprobs"]
    ids = choice.get("prompt_token_ids") or [None] * len(entries)
    nll = 0.0
    for token, entry in zip(ids[1:], entries[1:], strict=True):
        if token is not None and str(token) in entry:
            nll -= entry[str(token)]["logprob"]
        elif len(entry) == 1:
            nll -= next(iter(entry.values()))["logprob"]
        else:
            raise ValueError("prompt_logprobs without the prompt's own token")
    return nll
