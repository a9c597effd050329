"""Always-valid confidence sequences for a mean, so that a rollout may look at its samples
after every one and still stop with the error rate it was given.

The asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
("Time-uniform central limit theory and asymptotic confidence sequences", 2021, eq. 2.9,
the Gaussian-mixture boundary with the running variance): with probability about 1 - alpha,
at every sample count t at once,

    |mean_t - mu| <= sqrt( 2 v / (t^2 rho^2) * log( sqrt(v) / alpha ) ),
    v = t s_t^2 rho^2 + 1

where s_t^2 is the running variance and rho tunes where the sequence is tightest
(`rho_for`). A fixed-n interval checked after every sample would stop on noise far more
often than alpha; this one is valid at whichever sample the check happens to stop.
"""

import math
from dataclasses import dataclass

# A variance from fewer samples than this is too rough for the asymptotic boundary: no
# decision is taken before.
MIN_SAMPLES = 20


def rho_for(t_star: float, alpha: float) -> float:
    """The mixture width that makes the sequence tightest at about t_star samples."""
    lam = -2 * math.log(alpha)
    return math.sqrt((lam + math.log(lam + 1)) / t_star)


@dataclass
class RunningMean:
    """Welford's running mean and variance (one pass, stable)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of_counts(cls, n: int, k: int) -> "RunningMean":
        """n samples of 0 or 1, k of them 1 (errors among requests, say)."""
        p = k / n if n else 0.0
        return cls(n, p, n * p * (1 - p))

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def variance(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


def radius(stats: RunningMean, alpha: float, rho: float) -> float:
    """Half-width of the confidence sequence at this sample count (inf before MIN_SAMPLES)."""
    t = stats.n
    if t < MIN_SAMPLES:
        return math.inf
    v = t * stats.variance * rho * rho + 1
    return math.sqrt(2 * v / (t * t * rho * rho) * math.log(math.sqrt(v) / alpha))


def bounds(stats: RunningMean, alpha: float, rho: float) -> tuple[float, float]:
    r = radius(stats, alpha, rho)
    return stats.mean - r, stats.mean + r


def quantile_bounds(
    ordered: list[float], p: float, alpha: float, rho: float
) -> tuple[float, float]:
    """Always-valid bounds on the p-quantile of a distribution from its samples, sorted.

    Howard and Ramdas ("Sequential estimation of quantiles with applications to A/B
    testing", 2022): how many samples fall at or below the true quantile q_p is a running
    sum of Bernoulli(p) with p known, so the confidence sequence above, with the known
    variance p(1 - p), bounds that count; the order statistics at its ends bound q_p.
    (0, inf) until there are enough samples."""
    n = len(ordered)
    if n < MIN_SAMPLES:
        return 0.0, math.inf
    r = radius(RunningMean(n, p, p * (1 - p) * (n - 1)), alpha, rho)
    low_rank, high_rank = math.floor(n * (p - r)), math.ceil(n * (p + r))
    low = ordered[low_rank - 1] if low_rank >= 1 else 0.0
    high = ordered[high_rank - 1] if high_rank <= n else math.inf
    return low, high
