"""One ledger per engine: the engine's busy time, split among the requests it served.

vLLM loads this ASGI middleware into its API server (`--middleware`, added by
`EngineSettings.command`). Every generation request that reaches the engine passes here,
from whichever gateway worker, gateway replica or other client, so the engine's books are
whole whatever the topology: the charges of all requests add up to its busy seconds (time
with at least one request in flight) exactly, by the same processor-sharing rule as
`app.metrics.cost.SharingClock`.

A request is charged to the account a gateway names in `x-sparsegate-account` (user traffic,
shadow copies, quality scoring, cost probes; "direct" when none is named) and to the outcome
it had: `ok`, `invalid` (4xx), `error` (5xx or an exception), `cancelled` (the client left before
the answer ended: a gateway timeout or a user who went away). Dollars are seconds x the
price the gateway's deployment file gives (`sparsegate_engine_price_dollars_per_hour`).

A scoring request (the gateway's quality account, or any body asking for
`prompt_logprobs`) is also counted while in flight, in this process: the step-cost plugin
(`app.engines.step_costs`) does not time steps then, as such a prefill computes the whole
vocabulary at every prompt position, work of another kind than the generation it prices.

The counters go into the default Prometheus registry, which vLLM's own /metrics serves.
"""

import os
import re

from prometheus_client import Counter, Gauge

from app.metrics.cost import SharingClock

ACCOUNT_HEADER = b"x-sparsegate-account"
ALIAS_HEADER = b"x-sparsegate-alias"
ACCOUNTS = ("user", "shadow", "quality", "probe")
_ALIAS = re.compile(rb"[A-Za-z0-9._:/-]{1,64}")
GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions")
OK, INVALID, ERROR, CANCELLED = "ok", "invalid", "error", "cancelled"
# A number after the key: `"prompt_logprobs": null` asks for nothing.
_PROMPT_LOGPROBS = re.compile(rb'"prompt_logprobs"\s*:\s*-?\d')
_scoring = [0]  # scoring requests in flight in this process (vLLM's API server)


def scoring_in_flight() -> bool:
    return _scoring[0] > 0


_V = ["variant"]
BUSY = Counter(
    "sparsegate_engine_busy_seconds",
    "Seconds this engine had at least one generation request in flight (from any client)",
    _V,
)
CHARGED = Counter(
    "sparsegate_engine_charged_seconds",
    "This engine's busy seconds charged to its requests (processor sharing), by the account "
    "the gateway named, the alias, and the request's outcome; sums to the busy seconds",
    [*_V, "alias", "account", "outcome"],
)
INFLIGHT = Gauge(
    "sparsegate_engine_ledger_inflight",
    "Generation requests in flight at this engine: the charges equal the busy seconds "
    "whenever this is 0",
    _V,
)
REQUEST_SECONDS = Counter(
    "sparsegate_engine_request_seconds",
    "Summed durations of this engine's generation requests (over busy seconds: the mean "
    "number in flight)",
    _V,
)


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return None


def account_of(scope) -> tuple[str, str]:
    """(account, alias) as the gateway named them; anything else is bounded to a few values,
    so no client can grow the metric's label sets."""
    account = (_header(scope, ACCOUNT_HEADER) or b"").decode("latin-1")
    alias = _header(scope, ALIAS_HEADER) or b""
    return (
        account if account in ACCOUNTS else "direct",
        alias.decode() if _ALIAS.fullmatch(alias) else "none",
    )


class Ledger:
    """The ASGI middleware: charges each generation request its share of busy time."""

    def __init__(self, app, variant: str | None = None) -> None:
        self.app = app
        self.variant = variant or os.environ.get("SPARSEGATE_VARIANT", "unknown")
        self.clock = SharingClock()
        BUSY.labels(self.variant)
        REQUEST_SECONDS.labels(self.variant)
        self.inflight = INFLIGHT.labels(self.variant)

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or scope.get("path") not in GENERATE_PATHS:
            await self.app(scope, receive, send)
            return
        account, alias = account_of(scope)
        state = {"status": 500, "ended": False, "scoring": account == "quality", "tail": b""}
        _scoring[0] += state["scoring"]

        async def receive_and_scan():
            message = await receive()
            body = message.get("body") or b""
            if not state["scoring"] and _PROMPT_LOGPROBS.search(state["tail"] + body):
                state["scoring"] = True
                _scoring[0] += 1
            state["tail"] = body[-48:]  # a key split across two chunks is still found
            return message

        async def send_and_watch(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["ended"] = True
            await send(message)

        start, mark = self._enter()
        outcome = ERROR
        try:
            await self.app(scope, receive_and_scan, send_and_watch)
            outcome = _outcome(state["status"], state["ended"])
        except BaseException:
            outcome = CANCELLED if state["status"] < 400 and not state["ended"] else ERROR
            raise
        finally:
            _scoring[0] -= state["scoring"]
            self._leave(start, mark, alias, account, outcome)

    def _enter(self) -> tuple[float, float]:
        busy = self.clock.busy_s
        mark = self.clock.enter()
        BUSY.labels(self.variant).inc(self.clock.busy_s - busy)
        self.inflight.inc()
        return self.clock.now(), mark

    def _leave(self, start: float, mark: float, alias: str, account: str, outcome: str) -> None:
        busy = self.clock.busy_s
        share = self.clock.leave(mark)
        BUSY.labels(self.variant).inc(self.clock.busy_s - busy)
        CHARGED.labels(self.variant, alias, account, outcome).inc(share)
        REQUEST_SECONDS.labels(self.variant).inc(self.clock.now() - start)
        self.inflight.dec()


def _outcome(status: int, ended: bool) -> str:
    if not ended:
        return CANCELLED
    return OK if status < 400 else INVALID if status < 500 else ERROR
