"""Rollout evidence in the registry's database: the rows the gateways add, and a step's
evidence read back for the controller."""

from app.registry import Registry
from app.registry.store import now_precise
from app.rollouts.decide import Evidence


def add_samples(
    registry: Registry, quality: list[tuple], requests: dict, latency: list[tuple] = ()
) -> None:
    """quality: (rollout id, step, candidate, x bits, y bits); requests: (rollout id, step,
    variant) -> [requests, errors]; latency: (rollout id, step, variant, ttft s, tpot s or
    -1 when one token came). One transaction: all rows, or none."""
    if not quality and not requests and not latency:
        return
    stamp = now_precise()
    rows = [(*q, "quality") for q in quality] + [(*t, "latency") for t in latency]
    with registry.transaction() as tx:
        for rid, step, variant, x, y, kind in rows:
            tx.execute(
                "INSERT INTO rollout_samples (at, rollout_id, step, kind, variant, x, y) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (stamp, rid, step, kind, variant, x, y),
            )  # fmt: skip
        for (rid, step, variant), (n, errors) in requests.items():
            tx.execute(
                "INSERT INTO rollout_samples (at, rollout_id, step, kind, variant, requests, "
                "errors) VALUES (?, ?, ?, 'requests', ?, ?, ?)",
                (stamp, rid, step, variant, n, errors),
            )


def step_evidence(registry: Registry, rollout_id: str, step: int, candidate: str) -> Evidence:
    """Everything the gateways saw of this step of the rollout, in the order it came."""
    rows = registry.query(
        "SELECT kind, variant, x, y, requests, errors FROM rollout_samples "
        "WHERE rollout_id = ? AND step = ? ORDER BY at", (rollout_id, step),
    )  # fmt: skip
    evidence = Evidence()
    sides = {True: [0, 0], False: [0, 0]}
    for r in rows:
        if r["kind"] == "quality":
            evidence.quality.append((float(r["x"]), float(r["y"])))
        elif r["kind"] == "latency":
            side = 0 if r["variant"] == candidate else 1
            evidence.ttft[side].append(float(r["x"]))
            if float(r["y"]) >= 0:
                evidence.tpot[side].append(float(r["y"]))
        else:
            side = sides[r["variant"] == candidate]
            side[0] += int(r["requests"])
            side[1] += int(r["errors"])
    evidence.candidate_requests = tuple(sides[True])
    evidence.reference_requests = tuple(sides[False])
    return evidence
