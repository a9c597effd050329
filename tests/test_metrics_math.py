"""Cost attribution and quantile arithmetic, with a clock the test controls."""

import pytest

from app.metrics.cost import SharingClock
from app.metrics.exposition import histogram_quantile


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_request_alone_is_charged_its_whole_duration():
    clock = FakeClock()
    sharing = SharingClock(clock)
    mark = sharing.enter()
    clock.now = 3.0
    assert sharing.leave(mark) == pytest.approx(3.0)


def test_overlapping_requests_share_the_busy_time():
    clock = FakeClock()
    sharing = SharingClock(clock)
    a = sharing.enter()  # t=0: a alone
    clock.now = 1.0
    b = sharing.enter()  # t=1..3: a and b
    clock.now = 3.0
    c = sharing.enter()  # t=3..6: a, b and c
    clock.now = 6.0
    share_a = sharing.leave(a)
    clock.now = 8.0  # t=6..8: b and c
    share_b = sharing.leave(b)
    clock.now = 9.0  # t=8..9: c alone
    share_c = sharing.leave(c)
    assert share_a == pytest.approx(1 + 2 / 2 + 3 / 3)
    assert share_b == pytest.approx(2 / 2 + 3 / 3 + 2 / 2)
    assert share_c == pytest.approx(3 / 3 + 2 / 2 + 1)
    assert share_a + share_b + share_c == pytest.approx(9.0)  # busy time, charged once
    assert sharing.busy_s == pytest.approx(9.0)


def test_idle_time_is_charged_to_nobody():
    clock = FakeClock()
    sharing = SharingClock(clock)
    clock.now = 100.0  # idle since construction
    mark = sharing.enter()
    clock.now = 101.0
    assert sharing.leave(mark) == pytest.approx(1.0)
    assert sharing.busy_s == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.2), (0.375, 0.15), (0.25, 0.1), (0.75, 0.2 + 0.8 * 0.5), (1.0, 1.0)],
)
def test_histogram_quantile_interpolates_like_prometheus(q, expected):
    # 2 observations <= 0.1, 2 more <= 0.2, 4 more <= 1.0
    buckets = [(0.1, 2.0), (0.2, 4.0), (1.0, 8.0), (float("inf"), 8.0)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_of_nothing_is_none():
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_step_fit_recovers_the_step_time_model():
    import random

    from app.metrics.equal_work import fit_steps

    rng = random.Random(0)
    sums = dict.fromkeys(("n", "t", "p", "g", "pp", "gg", "pg", "tp", "tg"), 0.0)
    for _ in range(500):
        p = rng.choice([0, 0, 0, rng.randrange(10, 400)])  # mostly decode steps
        g = rng.randrange(1, 9)
        t = 0.002 + 1e-5 * p + 2e-4 * g + rng.gauss(0, 1e-5)
        for key, v in (("n", 1), ("t", t), ("p", p), ("g", g), ("pp", p * p), ("gg", g * g),
                       ("pg", p * g), ("tp", t * p), ("tg", t * g)):  # fmt: skip
            sums[key] += v
    fit = fit_steps(sums)
    assert fit.a == pytest.approx(0.002, rel=0.02)
    assert fit.b_p == pytest.approx(1e-5, rel=0.02)
    assert fit.b_g == pytest.approx(2e-4, rel=0.05)
    # A reference request: 100 prompt and 50 output tokens among 4 in flight.
    assert fit.request_seconds(100, 50, 4) == pytest.approx(50 * 0.002 / 4 + 1e-3 + 0.01, rel=0.03)


def test_step_fit_folds_a_constant_batch_into_the_fixed_cost():
    from app.metrics.equal_work import fit_steps

    sums = dict.fromkeys(("n", "t", "p", "g", "pp", "gg", "pg", "tp", "tg"), 0.0)
    for i in range(100):
        p, g = (200 if i % 10 == 0 else 0), 4  # the batch never changes size
        t = 0.002 + 1e-5 * p + 2e-4 * g
        for key, v in (("n", 1), ("t", t), ("p", p), ("g", g), ("pp", p * p), ("gg", g * g),
                       ("pg", p * g), ("tp", t * p), ("tg", t * g)):  # fmt: skip
            sums[key] += v
    fit = fit_steps(sums)
    assert fit.b_g == 0 and fit.a == pytest.approx(0.002 + 4 * 2e-4)
    assert fit.b_p == pytest.approx(1e-5)
    assert fit_steps({**sums, "n": 5}) is None  # too few steps to fit


def test_step_fit_splits_a_prefill_into_its_request_and_its_tokens_where_prompts_vary():
    """Prompts of three sizes (as cost probes add to traffic of one size): the cost per
    request and per prompt token come apart, and a prompt of another size is priced right.
    Prompts of one size: r is left out and b_p carries the request's cost, as before."""
    import random

    from app.metrics.equal_work import TERMS, fit_steps

    def sums(sizes: list[int]) -> dict[str, float]:
        rng, out = random.Random(2), dict.fromkeys((*TERMS, "n"), 0.0)
        for i in range(300):
            r = 1 if i % 3 == 0 else 0
            p, g = r * sizes[i // 3 % len(sizes)], 1 + i % 5
            t = 0.002 + 5e-3 * r + 1e-5 * p + 2e-4 * g + rng.gauss(0, 1e-5)
            values = {"n": 1, "t": t, "p": p, "g": g, "k": p > 0, "r": r}
            for term in TERMS[3:8] + TERMS[10:]:  # products of two
                values[term] = values[term[0]] * values[term[1]]
            for key, v in values.items():
                out[key] += v
        return out

    fit = fit_steps(sums([8, 64, 256]))
    assert fit.b_r == pytest.approx(5e-3, rel=0.02) and fit.b_p == pytest.approx(1e-5, rel=0.05)
    assert fit.request_seconds(400, 10, 2) == pytest.approx(
        10 * 0.002 / 2 + 5e-3 + 400 * 1e-5 + 10 * 2e-4, rel=0.02
    )
    one_size = fit_steps(sums([8]))
    assert one_size.b_r == 0 and one_size.b_p == pytest.approx((5e-3 + 8e-5) / 8, rel=0.02)


def test_a_reference_prompt_far_from_the_prefills_the_fit_rests_on_is_flagged():
    """Every prefill 8 tokens: b_p cannot tell per token from per request, so pricing a
    40-token prompt on it is flagged; 10 tokens is within the range."""
    from app.metrics.compare import prompt_range
    from app.metrics.equal_work import Mix, fit_steps

    sums = dict.fromkeys(("n", "t", "p", "g", "pp", "gg", "pg", "tp", "tg", "k"), 0.0)
    for i in range(60):
        p, g = (8 if i % 3 == 0 else 0), 1 + i % 4
        t = 0.002 + 5e-3 * (p > 0) + 2e-4 * g  # 5 ms per request, whatever its length
        for key, v in (("n", 1), ("t", t), ("p", p), ("g", g), ("pp", p * p), ("gg", g * g),
                       ("pg", p * g), ("tp", t * p), ("tg", t * g), ("k", p > 0)):  # fmt: skip
            sums[key] += v
    fit = fit_steps(sums)
    assert (fit.prompt_mean, fit.prompt_sd) == (8, 0)
    assert fit.b_p == pytest.approx(5e-3 / 8)  # the request's cost, spread over its tokens
    rates = {"prompt": 0.25, "output": 0.25}  # tokens per byte
    far, near = Mix(160, 40, 1, 10), Mix(40, 40, 1, 10)  # 40 and 10 prompt tokens
    assert prompt_range(fit, far, rates) == {"mean": 8, "sd": 0, "priced": 40,
                                             "extrapolated": True}  # fmt: skip
    assert prompt_range(fit, near, rates)["extrapolated"] is False
    assert prompt_range(fit_steps({**sums, "k": 0}), far, rates) is None  # no timed prefill


def test_paired_ratio_interval_covers_the_true_ratio():
    import random

    from app.texts.bpb import PairedSums

    assert PairedSums.of([(3.0, 3.0), (5.0, 5.0)]).interval() == (1.0, 1.0)
    rng = random.Random(1)
    covered = 0
    for _ in range(400):
        pairs = []
        for _ in range(30):
            y = rng.uniform(100, 200)
            pairs.append((1.05 * y * (1 + rng.gauss(0, 0.05)), y))
        low, high = PairedSums.of(pairs).interval()
        covered += low <= 1.05 <= high
    assert 0.90 <= covered / 400 <= 0.98


def test_tokens_per_byte_are_pooled_over_the_variants_of_one_tokenizer_only():
    from app.metrics.compare import tokenizer_rates
    from app.metrics.exposition import Samples

    samples = Samples()
    traffic = {"a": (100, 400), "b": (300, 600), "trimmed": (90, 300), "unknown": (10, 50)}
    for variant, (tokens, n_bytes) in traffic.items():
        for part in ("prompt", "output"):
            labels = {"variant": variant, "part": part}
            samples.add("sparsegate_text_tokens_total", labels, tokens)
            samples.add("sparsegate_text_bytes_total", labels, n_bytes)
    marks = {"a": "t1", "b": "t1", "trimmed": "t2"}  # "unknown": its engine did not say
    rates = tokenizer_rates(list(traffic), samples, marks)
    assert rates["a"] == rates["b"] == {"prompt": 0.4, "output": 0.4}  # 400 / 1000
    assert rates["trimmed"] == {"prompt": 0.3, "output": 0.3}
    assert rates["unknown"] == {"prompt": 0.2, "output": 0.2}
