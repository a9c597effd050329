"""The engine-side books without an engine: the ledger middleware's scoring watch and the
step-cost plugin's choice of which steps to time (vLLM's own IterationStats)."""

import asyncio

import pytest
from prometheus_client import REGISTRY
from vllm.v1.metrics.stats import IterationStats, PrefillStats

from app.engines.ledger import Ledger, scoring_in_flight
from app.engines.step_costs import StepCostLogger


def _call(chunks: list[bytes], headers=()) -> list[bool]:
    """One request through the ledger; what the app saw of scoring_in_flight() once it had
    read the whole body (as vLLM does before it generates)."""
    seen: list[bool] = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        seen.append(scoring_in_flight())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages = iter(
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    )

    async def receive():
        return next(messages)

    async def send(message):
        pass

    scope = {"type": "http", "path": "/v1/completions", "headers": list(headers)}
    asyncio.run(Ledger(app, variant="watch")(scope, receive, send))
    return seen


def test_scoring_requests_are_seen_while_in_flight_and_only_then():
    assert _call([b'{"prompt": "x", "prompt_logprobs": 0}']) == [True]
    assert _call([b'{"prompt": "x", "prompt_lo', b'gprobs" : 5}']) == [True]
    assert _call([b'{"prompt": "x", "prompt_logprobs": null}']) == [False]
    assert _call([b'{"prompt": "x"}']) == [False]
    quality = [(b"x-sparsegate-account", b"quality")]
    assert _call([b'{"prompt": "x"}'], quality) == [True]
    assert not scoring_in_flight()  # every one has left


def _steps(variant: str, name: str) -> float:
    return REGISTRY.get_sample_value(name, {"variant": variant}) or 0.0


def test_steps_are_not_timed_while_a_scoring_request_is_in_flight(monkeypatch):
    monkeypatch.setenv("SPARSEGATE_VARIANT", "steps-test")
    logger = StepCostLogger()
    step = IterationStats()
    step.inter_token_latencies_iter = [0.03, 0.02]  # two sequences decoded in this step
    step.num_generation_tokens = 2

    def counts() -> tuple[float, float]:
        return (_steps("steps-test", "sparsegate_engine_timed_steps_total"),
                _steps("steps-test", "sparsegate_engine_untimed_scoring_steps_total"))  # fmt: skip

    logger.record(None, step)
    assert counts() == (1, 0)
    seen: list[tuple[float, float]] = []

    async def app(scope, receive, send):
        await receive()
        logger.record(None, step)  # a step ends while the scoring request is in flight
        seen.append(counts())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b'{"prompt_logprobs": 1}'}

    async def send(message):
        pass

    scope = {"type": "http", "path": "/v1/completions", "headers": []}
    asyncio.run(Ledger(app, variant="steps-test")(scope, receive, send))
    assert seen == [(1, 1)]
    logger.record(None, step)  # timed again once it has left
    assert counts() == (2, 1)
    sums = {t: REGISTRY.get_sample_value("sparsegate_engine_step_moments_total",
                                         {"variant": "steps-test", "term": t})
            for t in ("t", "g", "gg")}  # fmt: skip
    assert sums == {"t": 0.04, "g": 4, "gg": 8}  # the shortest gap is the step's time


def test_prompt_tokens_read_from_the_prefix_cache_are_not_counted_as_step_work(monkeypatch):
    """A prefill of 300 prompt tokens of which 256 came from the prefix cache computes 44:
    the step fit's p is what the step computed, not vLLM's num_prompt_tokens (300)."""
    monkeypatch.setenv("SPARSEGATE_VARIANT", "cached-test")
    logger = StepCostLogger()
    step = IterationStats()
    step.inter_token_latencies_iter = [0.05]
    step.num_generation_tokens = 2
    prefill = PrefillStats()
    prefill.set(num_prompt_tokens=300, num_local_cached_tokens=256, num_external_cached_tokens=0)
    step.prompt_token_stats.update_from_output(prefill)
    assert step.num_prompt_tokens == 300
    logger.record(None, step)
    sums = {t: REGISTRY.get_sample_value("sparsegate_engine_step_moments_total",
                                         {"variant": "cached-test", "term": t})
            for t in ("p", "pp", "tp", "k")}  # fmt: skip
    assert sums == {"p": 44, "pp": 44 * 44, "tp": pytest.approx(0.05 * 44), "k": 1}


def test_a_stalled_step_counts_at_its_bound_and_a_larger_batch_in_full(monkeypatch):
    """After its fit has formed, a step of a batch the fit has seen that took far longer than
    the fit expects (a stall) enters the sums at STALL_RATIO x that, the rest counted apart;
    a step larger than any the fit has seen is counted in full, so that it teaches the fit."""
    from app.engines.step_costs import STALL_RATIO
    from app.metrics.equal_work import TERMS, fit_steps

    monkeypatch.setenv("SPARSEGATE_VARIANT", "stall-test")
    logger = StepCostLogger()

    def sums() -> dict[str, float]:
        out = {t: REGISTRY.get_sample_value("sparsegate_engine_step_moments_total",
                                            {"variant": "stall-test", "term": t}) or 0.0
               for t in TERMS}  # fmt: skip
        return {**out, "n": _steps("stall-test", "sparsegate_engine_timed_steps_total")}

    def stalled() -> float:
        return _steps("stall-test", "sparsegate_engine_step_stall_seconds_total")

    for i in range(64):  # 3 ms a step and 0.5 ms a sequence, prompts of 0 or 40 tokens
        p, g = 40 * (i % 4 == 0), 1 + i % 4
        logger.add(0.003 + 0.0005 * g + 1e-5 * p, p, g, r=int(p > 0))
    expected = fit_steps(sums()).step_seconds(0, 0, 2)
    assert expected == pytest.approx(0.004)
    before = sums()["t"]
    logger.add(0.5, 0, 2)  # a stall: 125 times the step's time
    assert sums()["t"] - before == pytest.approx(STALL_RATIO * expected, rel=0.01)
    assert stalled() == pytest.approx(0.5 - STALL_RATIO * expected, rel=0.01)
    logger.add(0.5, 0, 9)  # nine sequences: a batch the fit has not seen
    assert sums()["t"] - before == pytest.approx(STALL_RATIO * expected + 0.5, rel=0.01)
    assert stalled() == pytest.approx(0.5 - STALL_RATIO * expected, rel=0.01)
