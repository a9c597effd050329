"""The gateway's own overhead: the same load against the engine directly and through the
gateway, alternating in rounds within one run, so that drift hits both sides alike."""

import numpy as np

from app.bench.load import Load, Outcome, run_load


async def measure_overhead(
    gateway_url: str, engine_url: str, model: str, served_name: str, load: Load, rounds: int
) -> dict:
    sides: dict[str, tuple[list[Outcome], float]] = {"direct": ([], 0.0), "gateway": ([], 0.0)}
    per_round = Load(**{**load.__dict__, "requests": max(1, load.requests // rounds)})
    for _ in range(rounds):
        for side, url, name in (("direct", engine_url, served_name),
                                ("gateway", gateway_url, model)):  # fmt: skip
            outcomes, wall = await run_load(url, name, per_round)
            sides[side] = (sides[side][0] + outcomes, sides[side][1] + wall)
    out: dict = {"rounds": rounds, "load": load.__dict__}
    for side, (outcomes, wall) in sides.items():
        ok = [o for o in outcomes if o.ok]
        out[side] = {
            "requests": len(outcomes),
            "errors": len(outcomes) - len(ok),
            "output_tokens_per_s": sum(o.output_tokens for o in ok) / wall,
            "ttft_ms": {f"p{q}": float(np.percentile([o.ttft for o in ok], q)) * 1000
                        for q in (50, 99)},
            "e2e_ms": {f"p{q}": float(np.percentile([o.e2e for o in ok], q)) * 1000
                       for q in (50, 99)},
        }  # fmt: skip
    d, g = out["direct"], out["gateway"]
    out["added_ms"] = {
        metric: {q: g[metric][q] - d[metric][q] for q in ("p50", "p99")}
        for metric in ("ttft_ms", "e2e_ms")
    }
    out["throughput_lost"] = 1 - g["output_tokens_per_s"] / d["output_tokens_per_s"]
    return out
