"""A rollout's gates, each a sequential test on live samples: passed (the bound holds with
confidence), failed (it is broken with confidence) or undecided (more samples needed).

- Live quality: each sample is one text the reference wrote, scored by both models: the
  candidate's bits x and the reference's bits y on the same bytes. The ratio sum x / sum y
  is at most B exactly when the mean of d = x - B y is at most 0, so the gate is a test of
  that mean (text by text, paired: the text's own difficulty cancels).
- Errors: the candidate's error rate minus the reference's, at most D. Two independent
  means, each with its own sequence at half the error rate (a union bound).
- Latency (time to first token, time per output token): the candidate's quantile (p95 by
  default) over the reference's, at most L. Each side's quantile has its own distribution-
  free bounds at half the error rate; the ratio's bounds are their extreme quotients.

Every bound is an always-valid confidence sequence (app/rollouts/sequential.py): a gate
may be checked after every sample and still errs with probability about alpha at most.
"""

import math
from dataclasses import dataclass, field

from app.rollouts.sequential import RunningMean, bounds, quantile_bounds, rho_for

PASSED, FAILED, UNDECIDED = "passed", "failed", "undecided"


@dataclass
class Verdict:
    gate: str
    verdict: str
    value: float | None  # the point estimate (ratio, or difference of rates)
    low: float  # the confidence bounds on the tested mean
    high: float
    samples: int

    def as_dict(self) -> dict:
        """As stored and shown: JSON has no infinity, so a bound not reached yet is None."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in self.__dict__.items()}  # fmt: skip


@dataclass
class QualityGate:
    """max live bits-per-byte ratio, candidate over reference."""

    bound: float
    alpha: float
    t_star: float = 200.0
    d: RunningMean = field(default_factory=RunningMean)
    x_sum: float = 0.0
    y_sum: float = 0.0

    def add(self, candidate_bits: float, reference_bits: float) -> None:
        self.d.add(candidate_bits - self.bound * reference_bits)
        self.x_sum += candidate_bits
        self.y_sum += reference_bits

    def verdict(self) -> Verdict:
        low, high = bounds(self.d, self.alpha, rho_for(self.t_star, self.alpha))
        ratio = self.x_sum / self.y_sum if self.y_sum else None
        return Verdict("bpb_ratio", _verdict(low, high, 0.0), ratio, low, high, self.d.n)


@dataclass
class ErrorGate:
    """max error-rate difference, candidate minus reference."""

    bound: float
    alpha: float
    t_star: float = 500.0
    candidate: RunningMean = field(default_factory=RunningMean)
    reference: RunningMean = field(default_factory=RunningMean)

    def add(self, variant_is_candidate: bool, failed: bool) -> None:
        (self.candidate if variant_is_candidate else self.reference).add(float(failed))

    def set_counts(self, candidate: tuple[int, int], reference: tuple[int, int]) -> None:
        """(requests, errors) of each side, as the gateways counted them."""
        self.candidate = RunningMean.of_counts(*candidate)
        self.reference = RunningMean.of_counts(*reference)

    def verdict(self) -> Verdict:
        rho = rho_for(self.t_star, self.alpha / 2)
        c_low, c_high = bounds(self.candidate, self.alpha / 2, rho)
        r_low, r_high = bounds(self.reference, self.alpha / 2, rho)
        low, high = c_low - r_high, c_high - r_low
        value = self.candidate.mean - self.reference.mean if self.candidate.n else None
        verdict = _verdict(low, high, self.bound)
        return Verdict("error_rate_increase", verdict, value, low, high, self.candidate.n)


@dataclass
class LatencyGate:
    """max ratio of a latency quantile, candidate over reference (seconds per request)."""

    gate: str  # ttft_ratio, tpot_ratio
    bound: float
    alpha: float
    quantile: float = 0.95
    t_star: float = 500.0
    candidate: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    def verdict(self) -> Verdict:
        rho = rho_for(self.t_star, self.alpha / 2)
        cand, ref = sorted(self.candidate), sorted(self.reference)
        c_low, c_high = quantile_bounds(cand, self.quantile, self.alpha / 2, rho)
        r_low, r_high = quantile_bounds(ref, self.quantile, self.alpha / 2, rho)
        low = c_low / r_high if r_high > 0 else 0.0
        high = c_high / r_low if r_low > 0 else math.inf
        value = None
        if cand and ref:
            value = _point(cand, self.quantile) / max(_point(ref, self.quantile), 1e-9)
        verdict = _verdict(low, high, self.bound)
        return Verdict(self.gate, verdict, value, low, high, min(len(cand), len(ref)))


def _point(ordered: list[float], q: float) -> float:
    """The sample quantile (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _verdict(low: float, high: float, bound: float) -> str:
    if low > bound:
        return FAILED
    if high <= bound:
        return PASSED
    return UNDECIDED
