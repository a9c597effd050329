"""Cost probes without an engine: when a round is due, and when one is skipped. (Rounds on
real engines, and what they do to the step fit: tests/test_live_comparison.py.)"""

import asyncio
import random

from prometheus_client import REGISTRY

from app.gateway.config import VariantConfig
from app.gateway.cost_probes import CostProbes, prompt
from app.gateway.upstream import Engine


def _count(variant: str, outcome: str) -> float:
    labels = {"variant": variant, "outcome": outcome}
    return REGISTRY.get_sample_value("sparsegate_cost_probes_total", labels) or 0.0


def test_probe_prompts_have_their_words_and_never_share_a_prefix():
    rng = random.Random(0)
    texts = [prompt(words, rng) for words in (8, 64, 256) for _ in range(3)]
    assert [len(t.split()) for t in texts] == [8] * 3 + [64] * 3 + [256] * 3
    assert len({t.split()[0] for t in texts}) == len(texts)  # the prefix cache never hits


def test_a_round_is_due_every_n_requests_and_skipped_at_the_engines_bound():
    engine = Engine("probe-bound", VariantConfig(url="http://127.0.0.1:9", max_inflight=4), 5.0)
    probes = CostProbes({"probe-bound": engine}, every=3)
    engine.inflight = 3  # a round's carrier and probe would pass max_inflight

    async def serve(n: int) -> None:
        for _ in range(n):
            probes.served("probe-bound")

    asyncio.run(serve(7))
    assert _count("probe-bound", "skipped") == 2  # requests 3 and 6
    assert _count("probe-bound", "sent") == _count("probe-bound", "failed") == 0
    CostProbes({"off": engine}, every=0).served("off")  # 0: never a round
    assert _count("off", "skipped") == 0


def test_a_round_on_an_engine_that_does_not_answer_is_counted_failed_and_frees_its_slots():
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    engine = Engine("probe-down", VariantConfig(url=url), 5.0)
    probes = CostProbes({"probe-down": engine}, every=1)

    async def serve() -> None:
        probes.served("probe-down")
        await probes.drain()
        await engine.close()

    asyncio.run(serve())
    assert _count("probe-down", "failed") == 1 and _count("probe-down", "sent") == 0
    assert engine.inflight == 0


def test_rounds_vary_their_carriers_within_the_engines_bound():
    """Rounds alternate 1 and 4 carriers, as many as max_inflight leaves room for beside the
    probe: a round that would not fit in full still runs with fewer, and every slot it took
    is freed (the engine here does not answer, so each round fails once it has started)."""
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    engine = Engine("probe-room", VariantConfig(url=url, max_inflight=4), 5.0)
    probes = CostProbes({"probe-room": engine}, every=1)
    taken: list[int] = []
    enter = engine.enter

    def counting_enter() -> None:
        enter()
        taken.append(engine.inflight)

    engine.enter = counting_enter

    async def serve() -> None:
        for inflight in (0, 0, 1, 2):
            engine.inflight = inflight
            start = len(taken)
            probes.served("probe-room")
            await probes.drain()
            assert engine.inflight == inflight  # every slot freed
            rounds.append(len(taken) - start)
        await engine.close()

    rounds: list[int] = []
    asyncio.run(serve())
    # 1 carrier; 4 wanted, 3 fit beside the probe; 1; 4 wanted, 1 fits
    assert rounds == [2, 4, 2, 2]
    assert max(taken) == 4 and _count("probe-room", "failed") == 4
