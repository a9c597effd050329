"""Attributing an engine's machine cost to the requests it served (the engine's own ledger,
`app.engines.ledger`, keeps these books inside each engine).

An engine costs `price_per_hour` whether it is busy or idle. While it serves n requests at
once, each is charged 1/n of the elapsed time (processor sharing), so the charges of all
requests add up to price x busy time exactly, and a request that shares a batch with 15
others costs a sixteenth of one served alone. Idle time is not charged to any request:
it shows as price x wall time minus the attributed cost, and `busy_s` (time with at least
one request in flight) is what the charges must add up to.
"""

import time


class SharingClock:
    """A per-engine virtual clock that advances at 1/n while n requests are in flight."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._virtual = 0.0
        self._inflight = 0
        self.busy_s = 0.0

    def now(self) -> float:
        return self._clock()

    def _advance(self) -> float:
        now = self._clock()
        if self._inflight:
            self._virtual += (now - self._last) / self._inflight
            self.busy_s += now - self._last
        self._last = now
        return self._virtual

    def enter(self) -> float:
        """A request starts; returns its token for `leave`."""
        mark = self._advance()
        self._inflight += 1
        return mark

    def leave(self, mark: float) -> float:
        """The request ends; returns its share of the engine's busy seconds."""
        share = self._advance() - mark
        self._inflight -= 1
        return share
