"""Bits per byte: the unit that compares models whose tokenizers differ, since every model
reads the same bytes. And the ratio of two models' bits on the same texts, paired per text,
with its confidence interval."""

import math
from dataclasses import dataclass

LN2 = math.log(2)


def bits(nll_nats: float) -> float:
    return nll_nats / LN2


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return bits(nll_nats) / n_bytes


@dataclass(frozen=True)
class PairedSums:
    """Running sums over n texts of x (a candidate's bits on a text) and y (the reference's
    bits on the same text): all additive, so sums kept by several processes merge by adding.
    """

    n: float = 0.0
    x: float = 0.0
    y: float = 0.0
    xx: float = 0.0
    yy: float = 0.0
    xy: float = 0.0

    @classmethod
    def of(cls, pairs: list[tuple[float, float]]) -> "PairedSums":
        return cls(
            n=len(pairs), x=sum(a for a, _ in pairs), y=sum(b for _, b in pairs),
            xx=sum(a * a for a, _ in pairs), yy=sum(b * b for _, b in pairs),
            xy=sum(a * b for a, b in pairs),
        )  # fmt: skip

    @property
    def ratio(self) -> float | None:
        """Σx / Σy: the candidate's bits per byte over the reference's, on the same bytes."""
        return self.x / self.y if self.y > 0 else None

    def interval(self, z: float = 1.96) -> tuple[float, float] | None:
        """An approximate confidence interval (95% by default) of the ratio of means, by the
        delta method over texts: var(R) = (s_xx - 2 R s_xy + R^2 s_yy) / (n ybar^2), with
        the sample (co)variances s. None with fewer than two texts."""
        r = self.ratio
        if r is None or self.n < 2:
            return None
        n = self.n
        s_xx = (self.xx - self.x * self.x / n) / (n - 1)
        s_yy = (self.yy - self.y * self.y / n) / (n - 1)
        s_xy = (self.xy - self.x * self.y / n) / (n - 1)
        ybar = self.y / n
        var = max(0.0, (s_xx - 2 * r * s_xy + r * r * s_yy) / (n * ybar * ybar))
        half = z * math.sqrt(var)
        return r - half, r + half
