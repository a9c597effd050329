"""Cost on equal work: what one reference request costs on each variant.

Each variant's engine reports the sums of its timed steps (`app.engines.step_costs`): from
them, least squares fits its step time t = a + b_r r + b_p p + b_g g (a per step, b_r per
request whose prefill ends in the step, b_p per prompt token prefilled, b_g per sequence
decoding a token). A request of P prompt tokens and O output tokens, served among C
requests in flight, is in about O steps (the first token comes with its prefill), takes 1/C
of each step's fixed cost and its own costs:

    engine seconds = O a / C + b_r + b_p P + b_g O

b_r and b_p can only be told apart where prompts of several sizes were prefilled (the
gateway's cost probes see to it, app/gateway/cost_probes.py); where they cannot, the fit
leaves r out and b_p carries the cost per request too.

The reference request is the traffic's mix in bytes (mean prompt and output bytes per
request), at the engines' mean number of requests in flight C, or a workload given to the
compare view. It is turned into each variant's tokens by its tokens per byte (a trimmed
vocabulary spends more tokens on the same text): for a candidate that live quality scores,
its alias reference's rates x the candidate's tokens over the reference's on the same
sampled texts; else on the traffic of every variant with its tokenizer. The same work for
every variant, whatever traffic each one happened to get. Dollars are those seconds x the
engine's price.

The fit's p counts the prompt tokens each step computed (not those read from the prefix
cache), so b_p is the cost of prefilling one token. The reference prices all its prompt
tokens at b_p: prefix-cache hits depend on which requests each variant happened to get, so
equal work leaves them out.
"""

from dataclasses import dataclass

from app.metrics.exposition import Samples

TERMS = ("t", "p", "g", "pp", "gg", "pg", "tp", "tg", "k", "r", "rr", "rp", "rg", "tr")


@dataclass(frozen=True)
class StepFit:
    a: float  # seconds per step
    b_p: float  # seconds per prompt token
    b_g: float  # seconds per generated token
    steps: float  # steps the fit rests on
    # Sequences decoding per step, as the engine ran: pricing the reference at a
    # concurrency far from these extrapolates the fit.
    batch_mean: float = 0.0
    batch_sd: float = 0.0
    # Prompt tokens per step that prefilled: b_p rests on these, and where they hardly
    # varied it also holds each request's fixed overheads (b_p x P then misprices a
    # reference prompt far from them).
    prompt_mean: float = 0.0
    prompt_sd: float = 0.0
    b_r: float = 0.0  # seconds per request prefilled (0 where prompts did not vary)

    def step_seconds(self, r: float, p: float, g: float) -> float:
        """One step's expected time: r prefills ending, p prompt tokens, g decoding."""
        return self.a + self.b_r * r + self.b_p * p + self.b_g * g

    def request_seconds(self, prompt_tokens: float, output_tokens: float, inflight: float) -> float:
        return (
            output_tokens * self.a / max(inflight, 1.0)
            + self.b_r
            + self.b_p * prompt_tokens
            + self.b_g * output_tokens
        )


# Regressors to fit, most first: one that cannot be told apart from the others (prompts all
# of one size make r and p collinear) or that comes out negative is left out.
_MODELS = (("r", "p", "g"), ("p", "g"), ("r", "g"), ("p",), ("g",), ())


def fit_steps(m: dict[str, float], min_steps: int = 20) -> StepFit | None:
    """Least squares of t on (1, r, p, g) from the sums. A regressor that did not vary (every
    step decoded the same batch, say) cannot be told apart from the fixed cost: it is dropped
    and its cost folds into a. None below `min_steps` steps."""
    n = m.get("n", 0.0)
    if n < min_steps:
        return None
    for keep in _MODELS:
        theta = _solve(m, keep)
        if theta is not None and all(v >= 0 for v in theta.values()):
            batch, prompt = _mean_sd(m, "g", n), _mean_sd(m, "p", m.get("k", 0.0))
            return StepFit(theta["1"], theta.get("p", 0.0), theta.get("g", 0.0), n,
                           *batch, *prompt, b_r=theta.get("r", 0.0))  # fmt: skip
    return None


def _mean_sd(m: dict[str, float], x: str, count: float) -> tuple[float, float]:
    """Mean and spread of x over `count` steps (those where x may be non-zero)."""
    if count <= 0:
        return 0.0, 0.0
    mean = m[x] / count
    return mean, max(m[x + x] / count - mean * mean, 0.0) ** 0.5


def _solve(m: dict[str, float], keep: tuple[str, ...]) -> dict[str, float] | None:
    """Normal equations for t ~ 1 + keep, by Gaussian elimination (4 x 4 at most)."""
    names = ("1", *keep)
    # Collinear regressors give a huge, offsetting pair: refuse such a fit before solving.
    if keep and _condition(m, names) > 1e8:
        return None

    def s(x: str, y: str) -> float:  # Σ x y over steps, from the sums
        if x == "1" and y == "1":
            return m["n"]
        if x == "1" or y == "1":
            return m.get(y if x == "1" else x, 0.0)
        return m.get(x + y, m.get(y + x, 0.0))

    a = [[s(x, y) for y in names] + [m["t"] if x == "1" else m.get("t" + x, 0.0)] for x in names]
    k = len(names)
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        scale = max(abs(a[r][col]) for r in range(k)) or 1.0
        if abs(a[pivot][col]) < 1e-9 * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(k):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
    return {name: a[i][k] / a[i][i] for i, name in enumerate(names)}


def _condition(m: dict[str, float], names: tuple[str, ...]) -> float:
    """How close the regressors are to collinear: 1 / (1 - r^2) of the worst pair."""
    n = m["n"]
    worst = 1.0
    cols = [x for x in names if x != "1"]
    var = {x: m.get(x + x, 0.0) / n - (m.get(x, 0.0) / n) ** 2 for x in cols}
    if any(v <= 0 for v in var.values()):
        return float("inf")
    for i, x in enumerate(cols):
        for y in cols[i + 1 :]:
            cov = m.get(x + y, m.get(y + x, 0.0)) / n - m.get(x, 0.0) * m.get(y, 0.0) / n**2
            r2 = cov * cov / (var[x] * var[y])
            worst = max(worst, 1 / max(1e-12, 1 - r2))
    # A regressor that hardly varies is collinear with the constant.
    for x in cols:
        mean_sq = (m.get(x, 0.0) / n) ** 2
        if mean_sq and var[x] / mean_sq < 1e-6:
            return float("inf")
    return worst


ACCOUNTS = ("user", "shadow", "quality", "probe", "direct")


def engine_totals(samples: Samples) -> dict[str, float]:
    """The figures the gateway reads from one engine's /metrics (its ledger and step sums)."""
    out = {f"m.{k}": v for k, v in moments_any(samples).items()}
    out["stall_s"] = samples.sum("sparsegate_engine_step_stall_seconds_total")
    out["busy_s"] = samples.sum("sparsegate_engine_busy_seconds_total")
    out["request_s"] = samples.sum("sparsegate_engine_request_seconds_total")
    for account in ACCOUNTS:
        out[f"charged.{account}"] = samples.sum(
            "sparsegate_engine_charged_seconds_total", account=account
        )
    return out


def moments_any(samples: Samples) -> dict[str, float]:
    """The step sums of one engine's /metrics, whatever variant it books under."""
    out = {t: samples.sum("sparsegate_engine_step_moments_total", term=t) for t in TERMS}
    out["n"] = samples.sum("sparsegate_engine_timed_steps_total")
    return out


def step_fit(totals: dict[str, float]) -> StepFit | None:
    return fit_steps({k[2:]: v for k, v in totals.items() if k.startswith("m.")})


WORKLOAD_FIELDS = ("prompt_bytes", "output_bytes", "inflight")


@dataclass(frozen=True)
class Mix:
    """The reference request: mean bytes per successful user request, at the engines'
    mean number of requests in flight."""

    prompt_bytes: float
    output_bytes: float
    inflight: float
    requests: float


def reference_tokens(mix: Mix, tokens_per_byte: dict[str, float]) -> tuple[float, float]:
    """The reference request's prompt and output in one variant's tokens (its rates must
    include "output"; the prompt's default to it)."""
    prompt_rate = tokens_per_byte.get("prompt", tokens_per_byte["output"])
    return mix.prompt_bytes * prompt_rate, mix.output_bytes * tokens_per_byte["output"]


def dollars_per_million_output_bytes(
    fit: StepFit, mix: Mix, tokens_per_byte: dict[str, float], price_per_hour: float
) -> float | None:
    """The reference request priced on one variant, per million of its output bytes."""
    if not mix.output_bytes or not price_per_hour or "output" not in tokens_per_byte:
        return None
    seconds = fit.request_seconds(*reference_tokens(mix, tokens_per_byte), mix.inflight)
    return price_per_hour * seconds / 3600 / mix.output_bytes * 1e6
