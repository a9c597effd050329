"""The rollout controller: every few seconds, if it holds the lease, it decides each
running rollout's step on the evidence the gateways saved (app/rollouts/decide.py) and
records the decision with its evidence: advance, promote in the registry (its quality gate
applies), or roll back. Gateways read the result within their refresh (2 s).

Run it as its own process (`sparsegate rollout controller`), with the registry's writer
credentials: gateways only read the registry (and add evidence rows), as Argo Rollouts'
controller is apart from the pods it shifts traffic between."""

import logging
import os
import socket
import uuid
from collections.abc import Callable

from app.errors import SparsegateError
from app.metrics import definitions as m
from app.registry import Registry
from app.registry.records import Stage
from app.registry.store import now
from app.rollouts import lease
from app.rollouts.decide import ADVANCE, HOLD, PROMOTE, ROLLBACK, Decision, decide
from app.rollouts.evidence import step_evidence
from app.rollouts.gates import FAILED, PASSED
from app.rollouts.store import LIVE, Rollout, RolloutStore

log = logging.getLogger("sparsegate.rollouts")
LEASE = "rollout-controller"
_VERDICT = {PASSED: 1, FAILED: -1}


class Controller:
    def __init__(
        self,
        registry: Registry,
        lease_s: float = 10.0,
        quality_gate: float = 1.10,
        cost_saving: Callable[[Rollout], float | None] | None = None,
    ) -> None:
        self.registry, self.store = registry, RolloutStore(registry)
        self.lease_s, self.quality_gate = lease_s, quality_gate
        self.cost_saving = cost_saving or (lambda _r: None)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def tick(self) -> list[tuple[Rollout, Decision]]:
        """One round: the decisions taken (none without the lease)."""
        if not lease.hold(self.registry, LEASE, self.holder, self.lease_s):
            return []
        taken = []
        for rollout in self.store.listed():
            if rollout.state not in LIVE:
                continue
            # A paused rollout's gates are judged too (its metrics stay current), never acted on.
            act = rollout.state == "running"
            decision = self._decide(rollout, act)
            if act and decision.action != HOLD:
                taken.append((rollout, decision))
        return taken

    def _decide(self, r: Rollout, act: bool) -> Decision:
        evidence = step_evidence(self.registry, r.id, r.step, r.candidate)
        evidence.cost_saving = self.cost_saving(r)
        decision = decide(r.spec, r.step, evidence)
        for v in decision.verdicts:
            labels = (r.alias, r.candidate, v.gate)
            m.ROLLOUT_GATE_VALUE.labels(*labels).set(v.value if v.value is not None else 0.0)
            m.ROLLOUT_GATE_LOW.labels(*labels).set(v.low)
            m.ROLLOUT_GATE_HIGH.labels(*labels).set(v.high)
            m.ROLLOUT_GATE_SAMPLES.labels(*labels).set(v.samples)
            m.ROLLOUT_GATE_VERDICT.labels(*labels).set(_VERDICT.get(v.verdict, 0))
        if act and decision.action != HOLD:
            self._act(r, decision)
        return decision

    def _act(self, r: Rollout, d: Decision) -> None:
        detail = d.evidence() | {"step": r.step, "weight": r.weight}
        if d.action == ROLLBACK:
            self.store.set_state(r.alias, "rolled_back", "rolled back", reason=d.reason,
                                 detail=detail)  # fmt: skip
            self._reject(r, d)
        elif d.action == ADVANCE:
            pause = r.spec.steps[r.step + 1] in r.spec.pause_at
            self.store.set_state(r.alias, "paused" if pause else "running",
                                 "advanced and paused" if pause else "advanced",
                                 reason=d.reason, detail=detail, step=r.step + 1)  # fmt: skip
        elif d.action == PROMOTE:
            self._promote(r, detail)
        log.info("rollout %s of %s on %s: %s (%s)", r.id, r.candidate, r.alias, d.action,
                 d.reason)  # fmt: skip

    def _reject(self, r: Rollout, d: Decision) -> None:
        """The rolled-back candidate's stage says so, with the reason, in the registry. The
        rollback itself is already recorded: a refusal here is logged, never undoes it."""
        evidence = {"rejected": d.reason, "rollout": r.id, "alias": r.alias, "at": now(),
                    "gates": [v.as_dict() for v in d.verdicts]}  # fmt: skip
        try:
            if not self.registry.reject(r.candidate_entry, evidence):
                log.warning("%s is in production: rolled back on %s, not rejected",
                            r.candidate_entry, r.alias)  # fmt: skip
        except SparsegateError as e:
            log.warning("rolled back %s, but could not mark it rejected: %s", r.candidate, e)

    def _promote(self, r: Rollout, detail: dict) -> None:
        try:
            self.registry.set_stage(r.candidate_entry, Stage.production,
                                    quality_gate=self.quality_gate)  # fmt: skip
        except SparsegateError as e:  # the registry's offline gate said no: a person decides
            self.store.set_state(r.alias, "paused", "promotion refused", reason=str(e),
                                 detail=detail)  # fmt: skip
            return
        self.store.set_state(r.alias, "promoted", "promoted", reason="every gate passed",
                             detail=detail, step=len(r.spec.steps) - 1)  # fmt: skip

    def close(self) -> None:
        lease.release(self.registry, LEASE, self.holder)
