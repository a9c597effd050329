"""What an engine step costs, measured on live traffic: a vLLM stat-logger plugin (entry point
`vllm.stat_logger_plugins`), loaded by vLLM into its API server in the serve environment.

Each engine step runs a batch: some prompt tokens being prefilled (p, those not read from
the prefix cache) for r requests whose prefill ends in the step, and some sequences each
generating a token (g). Its time is modelled as t = a + b_r r + b_p p + b_g g, the linear
step-time model of LLM serving simulators (a fixed cost per step, then a cost per request
and per token of each kind). The plugin times every step in which some sequence decodes,
and keeps the sums that least squares needs (n, the sums of t, r, p, g and of their
products) as Prometheus counters: sums merge by adding and any window is a
difference, so whoever reads them (the gateway's compare view) fits the model on the
window it wants (`app.metrics.equal_work`), and equal work is priced from the fit on every
variant.

Stalls are left out of the sums. On a shared host a step now and then takes 100-1000 times
its usual time (the OS, a garbage collection, other processes on the cores): one 1.9 s step
among 183 of about 3 ms put 21 ms on the fixed cost of a tiny engine's fit (2.6 ms with the
stalls bounded). Such an outlier's leverage, not the work, then decides the price. A step
that took more than `STALL_RATIO` times what the engine's own fit expects of its batch
counts at that bound, and the rest is counted apart
(`sparsegate_engine_step_stall_seconds_total`, in the compare view). Only a step within
what the fit has seen (no larger prompt, batch or prefill count) is bounded, so that a
first long prompt teaches the fit its cost instead of being cut to the fit's guess.

This module is imported by vLLM, never by the gateway.
"""

import os

from prometheus_client import Counter
from vllm.v1.metrics.loggers import StatLoggerBase

from app.engines.ledger import scoring_in_flight
from app.metrics.equal_work import TERMS, StepFit, fit_steps  # the fit, named once

STALL_RATIO = 4.0
REFIT_EVERY = 16  # steps between refits of the fit that bounds stalls

STEPS = Counter(
    "sparsegate_engine_timed_steps",
    "Engine steps timed (those in which a sequence decoded), for the step-cost fit",
    ["variant"],
)
MOMENTS = Counter(
    "sparsegate_engine_step_moments",
    "Sums over timed steps of t (seconds), r (requests whose prefill ended), p (prompt "
    "tokens), g (generated tokens) and their products (term: t, r, p, g, rr, pp, gg, rp, rg, "
    "pg, tr, tp, tg): least squares' sufficient statistics; k counts the steps that "
    "prefilled (p > 0)",
    ["variant", "term"],
)
STALLED = Counter(
    "sparsegate_engine_step_stall_seconds",
    f"Time timed steps took beyond {STALL_RATIO:g} x what the engine's step-cost fit "
    "expects of their batch (stalls), left out of the fit's sums",
    ["variant"],
)
SKIPPED = Counter(
    "sparsegate_engine_untimed_scoring_steps",
    "Engine steps not timed for the step-cost fit because a scoring request "
    "(prompt_logprobs) was in flight",
    ["variant"],
)


class StepCostLogger(StatLoggerBase):
    def __init__(self, vllm_config=None, engine_index: int = 0) -> None:
        self.variant = os.environ.get("SPARSEGATE_VARIANT", "unknown")
        self._moments = {term: MOMENTS.labels(self.variant, term) for term in TERMS}
        self._steps = STEPS.labels(self.variant)
        self._skipped = SKIPPED.labels(self.variant)
        self._stalled = STALLED.labels(self.variant)
        self._sums = dict.fromkeys(("n", *TERMS), 0.0)  # this process's, for the bound
        self._fit: StepFit | None = None
        self._largest = {"p": 0, "g": 0, "r": 0}  # of each term, in the sums
        self._seen = dict(self._largest)  # ... as of the fit

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        # A sequence that decoded in the previous step and in this one has, as its
        # inter-token latency, this step's duration on the engine core's own clock (the
        # API server's clock would add its event loop's jitter). Steps with no such
        # sequence (a prefill alone) are not timed.
        gaps = iteration_stats.inter_token_latencies_iter if iteration_stats else None
        if not gaps:
            return
        if scoring_in_flight():  # a prompt_logprobs prefill: not the work equal work prices
            self._skipped.inc()
            return
        # Prompt tokens computed in this step: vLLM's num_prompt_tokens also counts those
        # read from the prefix cache, which cost the step nothing.
        computed = iteration_stats.prompt_token_stats.computed
        # Requests whose prefill ended in this step: each had its first token in it.
        ended = len(iteration_stats.time_to_first_tokens_iter)
        self.add(min(gaps), computed, iteration_stats.num_generation_tokens, ended)

    def add(self, t: float, p: int, g: int, r: int = 0) -> None:
        self._steps.inc()
        bound = self._bound(p, g, r)
        if t > bound:
            self._stalled.inc(t - bound)
            t = bound
        x = {"t": t, "p": p, "g": g, "r": r}
        x["k"] = 1 if p else 0  # counts the steps that prefilled
        self._sums["n"] += 1
        for term, counter in self._moments.items():
            # a two-letter term is the product of its letters' values
            value = x[term] if len(term) == 1 else x[term[0]] * x[term[1]]
            counter.inc(value)
            self._sums[term] += value
        for key in self._largest:
            self._largest[key] = max(self._largest[key], x[key])
        if self._sums["n"] % REFIT_EVERY == 0:
            self._fit, self._seen = fit_steps(self._sums), dict(self._largest)

    def _bound(self, p: int, g: int, r: int) -> float:
        """The most a step of this batch is counted at: unbounded before a fit, and for a
        batch larger in any term than those the fit has seen."""
        within = p <= self._seen["p"] and g <= self._seen["g"] and r <= self._seen["r"]
        if self._fit is None or not within:
            return float("inf")
        return STALL_RATIO * self._fit.step_seconds(r, p, g)

    def log_engine_initialized(self) -> None:
        pass
