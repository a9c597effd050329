"""Compression to a quality budget (`--max-bpb-ratio`) and per-layer sparsity (`--allocation
owl`): the arithmetic alone, the tiny model for the mechanics and refusals, SmolLM2 for a
search whose budget bites."""

import json

import pytest

from app.job.allocation import owl_from_ratios
from app.registry.embedded import EmbeddedRegistry
from tests.conftest import run_cli
from tests.test_cli import _error_line

FAST = ["--calibration-samples", "4", "--eval-windows", "2"]


def test_owl_spreads_sparsity_around_the_target_by_outliers():
    ratios = [0.010, 0.030, 0.020, 0.005]
    sparsity = owl_from_ratios(ratios, 0.5, lmbda=0.08)
    assert sum(sparsity) / len(sparsity) == pytest.approx(0.5)
    assert max(sparsity) - min(sparsity) == pytest.approx(0.16)
    # The layer with the most outliers is pruned least, the one with the fewest most.
    assert sparsity.index(min(sparsity)) == 1 and sparsity.index(max(sparsity)) == 3
    assert owl_from_ratios([0.02, 0.02], 0.6) == [0.6, 0.6]  # nothing to tell apart
    assert max(owl_from_ratios([0.0, 1.0], 0.95, lmbda=0.1)) == 0.99  # never all zeros


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--prune", "wanda", "--max-bpb-ratio", "0.98"], "must be at least 1"),
        (["--prune", "wanda", "--max-bpb-ratio", "1.05", "--sparsity", "0.5"], "drop --sparsity"),
        (["--prune", "wanda", "--max-bpb-ratio", "1.05", "--pattern", "2:4"], "drop --sparsity"),
        (["--quant", "w8a8", "--max-bpb-ratio", "1.05"], "needs a --prune method"),
        (["--prune", "magnitude", "--allocation", "owl"], "cannot allocate --allocation owl"),
        (["--prune", "wanda", "--pattern", "2:4", "--allocation", "owl"], "needs unstructured"),
        (["--prune", "wanda", "--allocation", "even"], "must be uniform or owl"),
        (["--prune", "wanda", "--search-step", "0.1"], "--search-step needs --max-bpb-ratio"),
        (
            ["--prune", "wanda", "--max-bpb-ratio", "1.05", "--search-step", "0.5"],
            "must be between 0.0025 and 0.25",
        ),
    ],
)
def test_bad_budget_or_allocation_is_one_line(tiny_registry, args, says):
    assert says in _error_line(run_cli("compress", "tiny", *args, registry=tiny_registry))


class _Magnitude:
    """Zeroes the smallest weights of every layer to the target."""

    def apply(self, job, target: float) -> None:
        import torch

        with torch.no_grad():
            for layer in job.model.layers:
                w = layer.weight
                k = round(target * w.numel())
                if k:
                    cut = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= cut] = 0.0


class _Curve:
    """Bits per byte as a known function of the model's measured sparsity."""

    def __init__(self, pydoc, news) -> None:
        self.pydoc, self.news = pydoc, news

    def score(self, model, tokenizer, steps, label) -> dict:
        from app.job.stats import overall_sparsity

        s = overall_sparsity(model)
        return {"pydoc": {"bpb": self.pydoc(s)}, "news": {"bpb": self.news(s)}}


def _job():
    from types import SimpleNamespace

    import torch

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(2)])
    return SimpleNamespace(model=model, tokenizer=None, steps=None, extra={},
                           recipe=SimpleNamespace(allocation="uniform"))  # fmt: skip


DENSE = {"pydoc": {"bpb": 1.0}, "news": {"bpb": 1.0}}


def test_bisection_keeps_the_largest_sparsity_within_the_budget():
    from app.job.budget import search
    from app.job.stats import overall_sparsity

    job = _job()
    # News is the binding text: within x1.03 up to sqrt(0.03 / 0.2) = 38.7% sparsity.
    curve = _Curve(lambda s: 1 + 0.05 * s, lambda s: 1 + 0.2 * s * s)
    out = search(job, _Magnitude(), curve, DENSE, 1.03)
    within = [p["sparsity"] for p in out["points"] if p["within"]]
    over = [p["sparsity"] for p in out["points"] if not p["within"]]
    assert out["chosen"] == max(within) and 0.387 - 0.025 <= out["chosen"] <= 0.387
    assert min(over) > 0.387 and min(over) - out["chosen"] <= 0.025
    # The model is left with the chosen point's weights, not the last probe's.
    assert overall_sparsity(job.model) == pytest.approx(out["chosen"], abs=0.001)
    # A coarser step: fewer points, a choice within that step of the lowest one over.
    coarse = search(_job(), _Magnitude(), curve, DENSE, 1.03, step=0.1)
    over = [p["sparsity"] for p in coarse["points"] if not p["within"]]
    assert len(coarse["points"]) < len(out["points"]) and coarse["step"] == 0.1
    assert coarse["chosen"] <= 0.387 < min(over) and min(over) - coarse["chosen"] <= 0.1


def test_bisection_stops_at_the_sparsity_cap():
    from app.job.budget import search
    from app.job.recipe import MAX_SPARSITY

    out = search(_job(), _Magnitude(), _Curve(lambda s: 1.0, lambda s: 1.0), DENSE, 1.01)
    assert out["chosen"] == MAX_SPARSITY and all(p["within"] for p in out["points"])


def test_a_budget_no_sparsity_meets_is_refused():
    from app.errors import SparsegateError
    from app.job.budget import search

    with pytest.raises(SparsegateError, match=r"no sparsity keeps .* within x1 .* news x1\.0"):
        search(_job(), _Magnitude(), _Curve(lambda s: 1.0, lambda s: 1.001 + s), DENSE, 1.0)


def test_owl_prunes_each_decoder_layer_to_its_own_share(tiny_registry):
    proc = run_cli("compress", "tiny", "--prune", "wanda", "--allocation", "owl", "--sparsity",
                   "0.5", "--name", "tiny-owl", *FAST, registry=tiny_registry)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads((tiny_registry / "tiny-owl" / "report.json").read_text())
    EmbeddedRegistry(tiny_registry).remove("tiny-owl")
    by_layer = report["sparsity_by_layer"]
    layer0 = [v for k, v in by_layer.items() if ".layers.0." in k]
    layer1 = [v for k, v in by_layer.items() if ".layers.1." in k]
    # Two layers: one at 50% - 8 points, the other at 50% + 8 (Wanda prunes per output row,
    # to within a row's rounding).
    assert sorted([sum(layer0) / len(layer0), sum(layer1) / len(layer1)]) == pytest.approx(
        [0.42, 0.58], abs=0.01
    )
    assert report["layer_allocation"] == "owl" and report["budget_search"] is None


@pytest.mark.slow
def test_search_finds_the_largest_sparsity_within_the_budget(smollm2_registry):
    """SmolLM2-135M, Wanda with OWL, within 1.05x dense bits per byte on both texts, to
    within 10 points (4 points measured, not the default step's 6: suite time)."""
    proc = run_cli("compress", "smollm2-135m", "--prune", "wanda", "--allocation", "owl",
                   "--max-bpb-ratio", "1.05", "--search-step", "0.1", *FAST,
                   registry=smollm2_registry)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "searched for ×1.05 bits per byte (owl allocation)" in proc.stdout
    variant = EmbeddedRegistry(smollm2_registry).get("smollm2-135m-wandaowlbpb105")
    search = variant.quality["budget_search"]
    points = search["points"]
    assert [p["sparsity"] for p in points] == sorted(p["sparsity"] for p in points)
    within = [p["sparsity"] for p in points if p["within"]]
    over = [p["sparsity"] for p in points if not p["within"]]
    # The budget bites: 50% is over it here, and the choice is the highest point within it,
    # closer than the search's step to the lowest point over it.
    assert 0.5 in over and within and search["chosen"] == max(within) and search["step"] == 0.1
    assert min(over) - search["chosen"] <= 0.1 and max(within) < min(over)
    for p in points:
        assert p["within"] == (max(p["bpb_ratio"].values()) <= 1.05)
    # The registered weights are the chosen point's (stored in bf16: a hair apart).
    assert variant.sparsity == pytest.approx(search["chosen"], abs=0.01)
    assert variant.quality["bpb_ratio_max"] <= 1.05 + 0.005
    layers = search["layer_sparsity"]
    assert len(layers) == 30 and max(layers) - min(layers) == pytest.approx(0.16)
