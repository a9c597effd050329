"""Figures the gateway derives at read time (from the engines' books and its own counters),
served on its /metrics next to its counters: what Grafana plots without re-deriving them."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily


class _Derived:
    def __init__(self, compared: dict) -> None:
        self.rows = compared["data"]
        self.mix = compared["reference_mix"]

    def collect(self):
        work = GaugeMetricFamily(
            "sparsegate_equal_work_dollars_per_million_output_bytes",
            "The reference request (this gateway's traffic mix) priced on each variant by "
            "its engine's step-cost fit, per million output bytes",
            labels=["variant"],
        )
        ratio = GaugeMetricFamily(
            "sparsegate_equal_work_cost_ratio",
            "Equal-work cost of each variant over its dense base's (same reference request)",
            labels=["variant"],
        )
        step = GaugeMetricFamily(
            "sparsegate_step_cost_seconds",
            "Each engine's fitted step time: fixed per step, per request prefilled, per prompt "
            "token, per output token",
            labels=["variant", "part"],
        )
        live = GaugeMetricFamily(
            "sparsegate_live_bits_per_byte_ratio",
            "Live quality: the candidate's bits per byte over its alias reference's on the "
            "reference's responses (bound: estimate, low, high of a 95% interval)",
            labels=["variant", "alias", "bound"],
        )
        mix = GaugeMetricFamily(
            "sparsegate_reference_request",
            "The reference request equal work prices: mean prompt and output bytes per "
            "successful request, and the engines' mean requests in flight",
            labels=["quantity"],
        )
        for key in ("prompt_bytes", "output_bytes", "inflight"):
            mix.add_metric([key], self.mix[key])
        for row in self.rows:
            self._row(row, work, ratio, step, live)
        yield from (work, ratio, step, live, mix)

    @staticmethod
    def _row(row, work, ratio, step, live) -> None:
        v = row["variant"]
        if row.get("equal_work_dollars_per_million_bytes") is not None:
            work.add_metric([v], row["equal_work_dollars_per_million_bytes"])
        r = row["ratio_to_base"].get("equal_work_dollars_per_million_bytes")
        if r is not None:
            ratio.add_metric([v], r)
        for part, value in (row.get("step_cost_s") or {}).items():
            if part != "steps":
                step.add_metric([v, part], value)
        if row.get("live_bpb_ratio") is not None:
            alias = row["live_bpb_alias"]
            live.add_metric([v, alias, "estimate"], row["live_bpb_ratio"])
            for bound, value in zip(
                ("low", "high"), row["live_bpb_ratio_ci95"] or (), strict=False
            ):
                live.add_metric([v, alias, bound], value)


def render_derived(compared: dict) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Derived(compared))
    return generate_latest(registry)
