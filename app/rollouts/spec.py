"""What a rollout is asked to do: the steps a candidate takes on an alias, and the gates
each step must pass. Plain data, stored with the rollout in the registry's database."""

import itertools

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.rollouts.sequential import MIN_SAMPLES

DEFAULT_STEPS = (0, 5, 25, 50, 100)


class Gates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Live bits per byte, candidate over reference, on text the reference wrote. Below 1 no
    # candidate can pass in expectation (cross-entropy is never below the entropy), so a
    # bound under 1 is refused as impossible.
    max_bpb_ratio: float = Field(default=1.02, ge=1.0, le=10.0)
    # Candidate error rate minus the reference's (0.01: one point).
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, lt=1.0)
    # Equal-work cost saving against the reference (0.1: at least 10% cheaper); needed to
    # advance, never a reason to roll back (the cost is a point estimate, not a test).
    min_cost_saving: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Latency quantile (latency_quantile, p95 by default), candidate over reference: time
    # to first token and time per output token of the streamed requests (shadow copies are
    # streamed to be timed). None: not gated. A bound under 1 asks for a faster candidate.
    max_ttft_ratio: float | None = Field(default=None, gt=0.0, le=100.0)
    max_tpot_ratio: float | None = Field(default=None, gt=0.0, le=100.0)
    latency_quantile: float = Field(default=0.95, ge=0.5, le=0.99)
    # 1 - the chance that a gate's verdict is wrong, over the whole rollout.
    confidence: float = Field(default=0.99, gt=0.5, lt=1.0)
    # Quality samples each step needs before it may advance.
    min_samples: int = Field(default=50, ge=MIN_SAMPLES)

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Percent of the alias's users the candidate serves at each step; 0: shadow copies
    # only. The last step is 100: reaching it promotes the candidate.
    steps: list[int] = Field(default_factory=lambda: list(DEFAULT_STEPS))
    gates: Gates = Field(default_factory=Gates)
    # Steps at which the rollout pauses on arriving, until resumed by hand (Argo's `pause`).
    pause_at: list[int] = Field(default_factory=list)
    shadow_fraction: float = Field(default=1.0, gt=0.0, le=1.0)  # at step 0
    quality_sample: float = Field(default=0.2, gt=0.0, le=1.0)  # of the reference's answers

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if len(steps) < 2:
            raise ValueError("give at least two steps, the last one 100")
        if any(not 0 <= s <= 100 for s in steps):
            raise ValueError(f"steps {steps}: each a percentage from 0 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps {steps}: each step above the one before")
        if steps[-1] != 100:
            raise ValueError(f"steps {steps}: the last step is 100 (the promotion)")
        return steps

    @model_validator(mode="after")
    def _pauses_on_steps(self) -> "RolloutSpec":
        wrong = [p for p in self.pause_at if p not in self.steps[1:-1]]
        if wrong:
            raise ValueError(f"pause_at {wrong}: each one of the steps between the first and 100")
        return self


def parse_steps(text: str) -> list[int]:
    """`0,5,25,50,100` -> [0, 5, 25, 50, 100] (checked by RolloutSpec)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"steps {text!r}: whole percentages, comma-separated") from None
