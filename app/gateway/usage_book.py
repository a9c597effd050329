"""What this gateway process served to each tenant key: Prometheus counters under the
key's name (never the key) and the rows not yet added to the registry's database (the
tenant-key refresh adds them, app/gateway/tenant_keys.py)."""

from app.metrics import definitions as m
from app.tenants.usage import Usage

OTHER = "_other"  # the label of key names past KEY_LABELS_MAX in this process


class UsageBook:
    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], Usage] = {}
        self._flushing: dict[tuple[str, str], Usage] = {}
        self._labels: set[str] = set()

    def label(self, name: str) -> str:
        if name in self._labels or len(self._labels) < m.KEY_LABELS_MAX:
            self._labels.add(name)
            return name
        return OTHER

    def refused(self, name: str, outcome: str) -> None:
        m.KEY_REQUESTS.labels(self.label(name), outcome).inc()

    def served(self, name: str, variant: str, outcome: str, used: Usage) -> None:
        key = self.label(name)
        m.KEY_REQUESTS.labels(key, outcome).inc()
        m.KEY_TOKENS.labels(key, "prompt").inc(used.prompt_tokens)
        m.KEY_TOKENS.labels(key, "completion").inc(used.completion_tokens)
        m.KEY_OUTPUT_BYTES.labels(key).inc(used.output_bytes)
        m.KEY_DOLLARS.labels(key).inc(used.dollars)
        if used.unpriced:
            m.KEY_UNPRICED.labels(key).inc(used.unpriced)
        self._pending.setdefault((name, variant or "none"), Usage()).add(used)

    def unsaved_dollars(self, name: str) -> float:
        """Dollars of this key not yet in the database (budgets add them to its rows)."""
        return sum(u.dollars for rows in (self._pending, self._flushing)
                   for (n, _), u in rows.items() if n == name)  # fmt: skip

    def take(self) -> dict[tuple[str, str], Usage]:
        """The rows to add now; `saved` or `not_saved` must follow."""
        self._flushing, self._pending = self._pending, {}
        return self._flushing

    def saved(self) -> None:
        self._flushing = {}

    def not_saved(self) -> None:
        """The database refused them: they go back, to be added with the next rows."""
        for key, used in self._flushing.items():
            self._pending.setdefault(key, Usage()).add(used)
        self._flushing = {}
