"""Cost probes: requests of known, varied shape that let each engine's step-cost fit tell
a cost per prompt token from a cost per request.

An engine whose traffic has prompts of one size computes the same prompt tokens in every
prefill, so its fit (app/metrics/equal_work.py) cannot split a prefill's cost into a part
per request and a part per token, and priced on a reference prompt of another size it
errs: on identical tiny engines, one given short prompts priced a longer one at 0.1-0.65x
the other's figure. A probe round varies the prompt size on the engine: a carrier (a short
prompt, `CARRIER_TOKENS` generated) streams first; once it decodes, a probe prompt of
`PROBE_WORDS[i]` words (cycled) is sent, so that its prefill runs in a step where a
sequence decodes: the steps the fit times (app/engines/step_costs.py).

The carriers also vary the batch: a round runs 1 or 4 of them (`CARRIERS`, fewer where the
engine's `max_inflight` leaves less room). An engine whose traffic decodes one or two
sequences at a time cannot otherwise tell a step's fixed cost from its cost per sequence,
and that split decides the price of a reference request at another concurrency (O a / C
against b_g O, app/metrics/equal_work.py).

One round is sent for every `cost_probe_every` requests a gateway process has completed
on an engine, at most one at a time per engine, and none where the engine's `max_inflight`
leaves no room for a carrier beside the probe: the probes cost a fixed share of the
traffic and nothing on an idle engine. Every request of a round is charged to the engine
ledger's `probe` account, never to a user. Each prompt opens with a fresh random number,
so the prefix cache never serves it (the fit counts only the prompt tokens a step
computed).
"""

import asyncio
import logging
import random

from app.gateway.upstream import BACKGROUND_FAILURES, Engine, Timings, relay_sse, send
from app.metrics import definitions as m

log = logging.getLogger("sparsegate.probes")
PROBE_WORDS = (8, 64, 256)
# Carriers per round, cycled apart from the prompt sizes (every pairing comes round): the
# batch varies too, so that the fit tells a step's fixed cost from its cost per sequence.
CARRIERS = (1, 4)  # two, so that PROBE_WORDS' three sizes meet each
CARRIER_TOKENS = 32
PROBE_TOKENS = 4
SENT, SKIPPED, FAILED = "sent", "skipped", "failed"
# Plain words that every tokenizer reads as a few tokens each.
_TEXT = "the cost of each step is measured while other requests decode and kept as sums"
# (StopAsyncIteration: the carrier's stream ended before its first event)
_FAILURES = (*BACKGROUND_FAILURES, StopAsyncIteration)


def prompt(words: int, rng: random.Random) -> str:
    text = _TEXT.split()
    body = (text * (words // len(text) + 1))[: max(words - 1, 0)]
    return " ".join([str(rng.randrange(10**9)), *body])


class CostProbes:
    def __init__(self, engines: dict[str, Engine], every: int, rng=None) -> None:
        self.engines, self.every = engines, every
        self.rng = rng or random.Random()
        self._served = dict.fromkeys(engines, 0)
        self._rounds = dict.fromkeys(engines, 0)
        self._tasks: dict[str, asyncio.Task] = {}
        for name in engines:
            for outcome in (SENT, SKIPPED, FAILED):
                m.COST_PROBES.labels(name, outcome)

    def served(self, name: str) -> None:
        """A request on the engine completed: every `every`-th starts a round."""
        if not self.every or name not in self._served:
            return
        self._served[name] += 1
        if self._served[name] % self.every:
            return
        engine, i = self.engines[name], self._rounds[name]
        # as many carriers as the engine's bound leaves room for, beside the probe
        room = engine.config.max_inflight - engine.inflight - 1
        words, carriers = PROBE_WORDS[i % len(PROBE_WORDS)], min(CARRIERS[i % len(CARRIERS)], room)
        if name in self._tasks or carriers < 1:
            m.COST_PROBES.labels(name, SKIPPED).inc()
            return
        self._rounds[name] += 1
        task = asyncio.create_task(self._round(engine, words, carriers))
        self._tasks[name] = task
        task.add_done_callback(lambda _t: self._tasks.pop(name, None))

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=30)

    async def _round(self, engine: Engine, words: int, carriers: int) -> None:
        model = engine.config.served_name or engine.name
        probe = {"model": model, "prompt": prompt(words, self.rng), "max_tokens": PROBE_TOKENS,
                 "ignore_eos": True, "temperature": 0}  # fmt: skip
        for _ in range(carriers + 1):
            engine.enter()
        streams: list = []
        try:
            for _ in range(carriers):  # each decoding before the next is sent
                streams.append(await self._carrier(engine, model))
            answer = await send(engine, "/v1/completions", probe, stream=False,
                                account="probe")  # fmt: skip
            for _, events in streams:
                async for _ in events:
                    pass
            if answer.status != 200:
                raise ValueError(f"the probe was answered {answer.status}")
            m.COST_PROBES.labels(engine.name, SENT).inc()
        except _FAILURES as e:
            log.warning("cost probe on %s failed: %s", engine.name, e)
            m.COST_PROBES.labels(engine.name, FAILED).inc()
        finally:
            for response, _ in streams:
                response.release()
            for _ in range(carriers + 1):
                engine.leave()

    async def _carrier(self, engine: Engine, model: str) -> tuple:
        """A carrier streaming, once it has decoded its first token: (response, events)."""
        body = {"model": model, "prompt": prompt(4, self.rng), "max_tokens": CARRIER_TOKENS,
                "ignore_eos": True, "temperature": 0, "stream": True}  # fmt: skip
        response = await send(engine, "/v1/completions", body, stream=True, account="probe")
        try:
            if response.status != 200:
                raise ValueError(f"a carrier was answered {response.status}")
            events = relay_sse(response, client_wants_usage=False, timings=Timings(),
                               usage={}, text=None)  # fmt: skip
            await anext(events)
        except BaseException:
            response.release()
            raise
        return response, events
