"""Dollars of one request on the equal-work cost model (app/metrics/equal_work.py): its
tokens priced by its variant's step fit, at the engine's mean number of requests in
flight, x the variant's price. The same work costs the same on a variant whichever tenant
sends it, whatever else the engine happened to serve beside it."""

import asyncio

from app.gateway.engine_books import EngineBooks
from app.metrics.equal_work import StepFit, step_fit

REFRESH_S = 10.0


class Pricer:
    def __init__(self, books: EngineBooks, prices: dict[str, float]) -> None:
        self.books, self.prices = books, prices
        self._fits: dict[str, tuple[StepFit, float]] = {}

    async def refresh(self) -> None:
        for variant, totals in (await self.books.read()).items():
            fit = step_fit(totals) if totals else None
            if fit is not None:  # an engine that did not answer keeps its last fit
                busy = totals["busy_s"]
                self._fits[variant] = (fit, totals["request_s"] / busy if busy else 1.0)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(REFRESH_S)

    def dollars(self, variant: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """None until the variant's engine has a step fit (its first steps)."""
        price = self.prices.get(variant, 0.0)
        if not price:
            return 0.0  # a variant without a price costs nothing on the books
        found = self._fits.get(variant)
        if found is None:
            return None
        fit, inflight = found
        return price * fit.request_seconds(prompt_tokens, completion_tokens, inflight) / 3600
