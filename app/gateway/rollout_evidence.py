"""What this gateway process saw of each live rollout, kept until the next refresh adds it
to the registry's database (app/gateway/rollout_sync.py): every quality sample of the
candidate against the reference, and per variant the alias's requests and errors (an
engine error, a timeout, an engine that did not answer). Requests the client got wrong
(4xx) or left are neither."""

from dataclasses import dataclass


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
        self._taken: tuple[list[tuple], dict] = ([], {})

    def request(self, alias: str, variant: str, failed: bool) -> None:
        live = self.live.get(alias)
        if live is None or variant not in (live.candidate, live.reference):
            return
        counts = self._requests.setdefault((live.rollout_id, live.step, variant), [0, 0])
        counts[0] += 1
        counts[1] += int(failed)

    def quality(self, alias: str, candidate: str, x: float, y: float) -> None:
        live = self.live.get(alias)
        if live is not None and candidate == live.candidate:
            self._quality.append((live.rollout_id, live.step, candidate, x, y))

    def take(self) -> tuple[list[tuple], dict]:
        """Rows to add now; `not_saved` puts them back if the database refused them."""
        self._taken = (self._quality, self._requests)
        self._quality, self._requests = [], {}
        return self._taken

    def not_saved(self) -> None:
        quality, requests = self._taken
        self._quality[:0] = quality
        for key, (n, errors) in requests.items():
            counts = self._requests.setdefault(key, [0, 0])
            counts[0] += n
            counts[1] += errors
        self._taken = ([], {})
