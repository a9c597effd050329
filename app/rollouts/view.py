"""Where each alias's latest rollout stands, as the gateway's dashboard shows it: the
rollout, the gates as the controller would judge them on the evidence so far (the same
rule, app/rollouts/decide.py; the cost saving is the controller's to fetch), and its last
events."""

from app.registry import Registry
from app.rollouts.decide import decide
from app.rollouts.evidence import step_evidence
from app.rollouts.store import LIVE, RolloutStore

EVENTS_SHOWN = 8


def rollouts_view(registry: Registry, aliases: list[str]) -> list[dict]:
    store = RolloutStore(registry)
    latest = {r.alias: r for r in store.listed() if r.alias in aliases}  # by creation time
    shown = []
    for alias in sorted(latest):
        r = latest[alias]
        row = {"id": r.id, "alias": alias, "candidate": r.candidate, "reference": r.reference,
               "state": r.state, "step": r.step, "steps": r.spec.steps, "weight": r.weight,
               "reason": r.reason, "step_started_at": r.step_started_at,
               "gates": [], "waiting": None}  # fmt: skip
        if r.state in LIVE:
            decision = decide(r.spec, r.step, step_evidence(registry, r.id, r.step, r.candidate))
            bounds = r.spec.gates.model_dump()
            row["gates"] = [v.as_dict() | {"bound": bounds.get(f"max_{v.gate}")}
                            for v in decision.verdicts]  # fmt: skip
            row["waiting"] = "paused until resumed" if r.state == "paused" else decision.reason
        row["events"] = [
            {"at": e["at"], "kind": e["kind"], "actor": e["actor"],
             "reason": e["detail"].get("reason")}
            for e in store.events(r.id)[-EVENTS_SHOWN:]
        ]  # fmt: skip
        shown.append(row)
    return shown
