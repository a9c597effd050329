"""The gateway's own overhead: the same load against the engine directly and through the
gateway, alternating in rounds within one run, so that drift hits both sides alike.

Latency and throughput differences depend on the machine (on a small one the gateway takes
CPU from the engine it fronts); the gateway's own CPU time per request and per token, read
from its `process_cpu_seconds_total` over the gateway rounds, is the figure that carries
over to any machine."""

import itertools
import random

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app.bench.load import Load, Outcome, run_load


async def gateway_metric(url: str, family: str, headers: dict | None = None) -> float | None:
    """One figure of the gateway's own /metrics (the sum of the family's samples); None where
    it does not say (with several workers prometheus-client exports no process metrics)."""
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        text = (await http.get(f"{url.rstrip('/')}/metrics")).text
    for found in text_string_to_metric_families(text):
        if found.name == family:
            return sum(sample.value for sample in found.samples)
    return None


async def gateway_cpu_seconds(url: str, headers: dict | None = None) -> float | None:
    """The gateway process's CPU seconds (user + system)."""
    return await gateway_metric(url, "process_cpu_seconds", headers)


async def measure_overhead(
    gateway_url: str,
    engine_url: str,
    model: str,
    served_name: str,
    load: Load,
    rounds: int,
    headers: dict | None = None,
    limited: dict | None = None,
) -> dict:
    """`headers`: the gateway's Authorization (the engine takes none); `limited`: that of a
    tenant key with limits and a budget, run as a third side ("limits") in the same
    rounds: what counting them costs, against the gateway without them."""
    plan = [("direct", engine_url, served_name, None), ("gateway", gateway_url, model, headers)]
    if limited:
        plan.append(("limits", gateway_url, model, limited))
    sides: dict[str, tuple[list[Outcome], float]] = {side: ([], 0.0) for side, *_ in plan}
    cpu: dict[str, float | None] = {side: 0.0 for side, *_ in plan[1:]}
    per_round = Load(**{**load.__dict__, "requests": max(1, load.requests // rounds)})
    seeds = itertools.count(random.randrange(1 << 30))  # new prompts for every run
    for _ in range(rounds):
        for side, url, name, auth in plan:
            before = await gateway_cpu_seconds(gateway_url, headers) if side in cpu else None
            outcomes, wall = await run_load(url, name, per_round, seed=next(seeds), headers=auth)
            sides[side] = (sides[side][0] + outcomes, sides[side][1] + wall)
            if side in cpu:
                after = await gateway_cpu_seconds(gateway_url, headers)
                spent = cpu[side]
                cpu[side] = None if spent is None or before is None else spent + after - before
    out: dict = {"rounds": rounds, "load": load.__dict__}
    for side, (outcomes, wall) in sides.items():
        out[side] = _side(outcomes, wall)
    d, g = out["direct"], out["gateway"]
    out["added_ms"] = {
        metric: {q: g[metric][q] - d[metric][q] for q in ("p50", "p99")}
        for metric in ("ttft_ms", "e2e_ms")
    }
    out["throughput_lost"] = 1 - g["output_tokens_per_s"] / d["output_tokens_per_s"]
    out["gateway_cpu"] = _cpu(cpu["gateway"], sides["gateway"])
    if limited:
        out["limits_throughput_lost"] = (
            1 - out["limits"]["output_tokens_per_s"] / g["output_tokens_per_s"]
        )
        out["limits_cpu"] = _cpu(cpu["limits"], sides["limits"])
    return out


def _side(outcomes: list[Outcome], wall: float) -> dict:
    ok = [o for o in outcomes if o.ok]
    return {
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "output_tokens_per_s": sum(o.output_tokens for o in ok) / wall,
        "ttft_ms": {f"p{q}": float(np.percentile([o.ttft for o in ok], q)) * 1000
                    for q in (50, 99)},
        "e2e_ms": {f"p{q}": float(np.percentile([o.e2e for o in ok], q)) * 1000
                   for q in (50, 99)},
    }  # fmt: skip


def _cpu(seconds: float | None, side: tuple[list[Outcome], float]) -> dict | None:
    """The gateway's CPU over one side's rounds: per request, per streamed token."""
    if seconds is None:
        return None
    outcomes, wall = side
    tokens = sum(o.output_tokens for o in outcomes if o.ok)
    return {
        "seconds": seconds,
        "ms_per_request": seconds * 1000 / max(1, len(outcomes)),
        "us_per_token": seconds * 1e6 / max(1, tokens),
        "share_of_wall": seconds / wall,
    }
