"""One step's decision from its evidence: roll back as soon as a gate fails with
confidence; advance once every gate passes with confidence and the step has its minimum of
quality samples (and the cost saving holds); else hold and gather more."""

from dataclasses import dataclass, field

from app.rollouts.gates import FAILED, PASSED, ErrorGate, LatencyGate, QualityGate, Verdict
from app.rollouts.spec import RolloutSpec

ADVANCE, PROMOTE, ROLLBACK, HOLD = "advance", "promote", "rollback", "hold"


@dataclass
class Evidence:
    """Samples since the step began, from every gateway process."""

    quality: list[tuple[float, float]] = field(default_factory=list)  # (candidate, reference) bits
    candidate_requests: tuple[int, int] = (0, 0)  # (requests, errors)
    reference_requests: tuple[int, int] = (0, 0)
    cost_saving: float | None = None  # 1 - candidate / reference, equal-work dollars
    # Seconds per timed request: (candidate's, reference's)
    ttft: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    tpot: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))


@dataclass
class Decision:
    action: str
    reason: str
    verdicts: list[Verdict]

    def evidence(self) -> dict:
        return {"action": self.action, "reason": self.reason,
                "gates": [v.as_dict() for v in self.verdicts]}  # fmt: skip


def decide(spec: RolloutSpec, step: int, evidence: Evidence) -> Decision:
    g = spec.gates
    verdicts = _verdicts(spec, evidence)
    failed = [v for v in verdicts if v.verdict == FAILED]
    if failed:
        return Decision(ROLLBACK, "; ".join(_broken(v, spec) for v in failed), verdicts)
    waiting = [v.gate for v in verdicts if v.verdict != PASSED]
    if waiting:
        return Decision(HOLD, f"undecided: {', '.join(waiting)}", verdicts)
    if verdicts[0].samples < g.min_samples:
        return Decision(HOLD, f"{verdicts[0].samples} of {g.min_samples} quality samples",
                        verdicts)  # fmt: skip
    saving = evidence.cost_saving
    if g.min_cost_saving > 0 and (saving is None or saving < g.min_cost_saving):
        shown = "unknown" if saving is None else f"{saving:.1%}"
        return Decision(HOLD, f"cost saving {shown}, under {g.min_cost_saving:.1%}", verdicts)
    action = PROMOTE if spec.steps[step + 1] == 100 else ADVANCE
    return Decision(action, "every gate passed", verdicts)


def _verdicts(spec: RolloutSpec, evidence: Evidence) -> list[Verdict]:
    g = spec.gates
    latency = {"ttft_ratio": (g.max_ttft_ratio, evidence.ttft),
               "tpot_ratio": (g.max_tpot_ratio, evidence.tpot)}  # fmt: skip
    latency = {name: v for name, v in latency.items() if v[0] is not None}
    alpha = g.alpha / (2 + len(latency))  # the tested gates share it (a union bound)
    quality = QualityGate(g.max_bpb_ratio, alpha)
    for x, y in evidence.quality:
        quality.add(x, y)
    errors = ErrorGate(g.max_error_rate_increase, alpha)
    errors.set_counts(evidence.candidate_requests, evidence.reference_requests)
    verdicts = [quality.verdict(), errors.verdict()]
    for name, (bound, (candidate, reference)) in latency.items():
        gate = LatencyGate(name, bound, alpha, g.latency_quantile, candidate=candidate,
                           reference=reference)  # fmt: skip
        verdicts.append(gate.verdict())
    return verdicts


def _broken(v: Verdict, spec: RolloutSpec) -> str:
    if v.gate == "bpb_ratio":
        return (f"live bits-per-byte ratio {v.value:.4f} over {spec.gates.max_bpb_ratio} "
                f"with confidence, on {v.samples} samples")  # fmt: skip
    if v.gate in ("ttft_ratio", "tpot_ratio"):
        q = round(spec.gates.latency_quantile * 100)
        bound = getattr(spec.gates, f"max_{v.gate}")
        return (f"{v.gate[:4]} p{q} {v.value:.3f}x the reference's, over {bound} with "
                f"confidence, on {v.samples} timed requests")  # fmt: skip
    return (f"error rate {v.value:+.2%} over the reference's, past "
            f"{spec.gates.max_error_rate_increase:.2%} with confidence")  # fmt: skip
