"""Reading the gateway's own metrics back: /metrics text and samples for the compare view.

With several workers (PROMETHEUS_MULTIPROC_DIR set), every read merges all workers' files,
so each worker answers with the whole gateway's figures.
"""

import os
from collections import defaultdict

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "Samples", "histogram_quantile", "read_samples", "render"]


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged
    return REGISTRY


def render() -> bytes:
    return generate_latest(_registry())


class Samples:
    """Sample values summed over every label not asked for."""

    def __init__(self) -> None:
        self._values: dict[str, list[tuple[dict, float]]] = defaultdict(list)

    def add(self, name: str, labels: dict, value: float) -> None:
        self._values[name].append((labels, value))

    def sum(self, name: str, **match: str) -> float:
        return sum(
            v for labels, v in self._values.get(name, [])
            if all(labels.get(k) == want for k, want in match.items())
        )  # fmt: skip

    def series(self, name: str) -> list[tuple[dict, float]]:
        return list(self._values.get(name, []))

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) pairs of a histogram, summed over other labels."""
        by_le: dict[float, float] = defaultdict(float)
        for labels, v in self._values.get(f"{name}_bucket", []):
            if all(labels.get(k) == want for k, want in match.items()):
                by_le[float(labels["le"])] += v
        return sorted(by_le.items())


def read_samples() -> Samples:
    out = Samples()
    for metric in _registry().collect():
        for s in metric.samples:
            out.add(s.name, s.labels, s.value)
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # as Prometheus does: the highest finite bound
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
