"""What this gateway process saw of each live rollout, kept until the next refresh adds it
to the registry's database (app/gateway/rollout_sync.py): every quality sample of the
candidate against the reference, per variant the alias's requests and errors (an engine
error, a timeout, an engine that did not answer), and each streamed answer's time to first
token and time per output token. Requests the client got wrong (4xx) or left are none."""

from dataclasses import dataclass

# Timed requests kept per rollout step and variant by one process: more than a latency
# gate needs to decide (hundreds), few enough that the controller reads them every tick.
MAX_TIMED = 5000


@dataclass(frozen=True)
class Live:
    rollout_id: str
    step: int
    candidate: str
    reference: str


class EvidenceBook:
    def __init__(self) -> None:
        self.live: dict[str, Live] = {}  # alias -> its rollout, as last read
        self._quality: list[tuple] = []
        self._requests: dict[tuple[str, int, str], list[int]] = {}
        self._latency: list[tuple] = []
        self._timed: dict[tuple[str, int, str], int] = {}
        self._taken: tuple[list[tuple], dict, list[tuple]] = ([], {}, [])

    def request(self, alias: str, variant: str, failed: bool, timings=None,
                tokens: int = 0) -> None:  # fmt: skip
        """One answer of the alias; `timings` (upstream.Timings) of a streamed one."""
        live = self.live.get(alias)
        if live is None or variant not in (live.candidate, live.reference):
            return
        key = (live.rollout_id, live.step, variant)
        counts = self._requests.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += int(failed)
        if failed or timings is None or timings.first_token is None:
            return
        if self._timed.get(key, 0) >= MAX_TIMED:
            return
        self._timed[key] = self._timed.get(key, 0) + 1
        events = timings.token_events
        tpot = (events[-1] - events[0]) / (tokens - 1) if tokens > 1 and len(events) > 1 else -1
        self._latency.append((*key, timings.first_token - timings.start, tpot))

    def quality(self, alias: str, candidate: str, x: float, y: float) -> None:
        live = self.live.get(alias)
        if live is not None and candidate == live.candidate:
            self._quality.append((live.rollout_id, live.step, candidate, x, y))

    def take(self) -> tuple[list[tuple], dict, list[tuple]]:
        """Rows to add now; `not_saved` puts them back if the database refused them."""
        self._taken = (self._quality, self._requests, self._latency)
        self._quality, self._requests, self._latency = [], {}, []
        return self._taken

    def not_saved(self) -> None:
        quality, requests, latency = self._taken
        self._quality[:0] = quality
        self._latency[:0] = latency
        for key, (n, errors) in requests.items():
            counts = self._requests.setdefault(key, [0, 0])
            counts[0] += n
            counts[1] += errors
        self._taken = ([], {}, [])
