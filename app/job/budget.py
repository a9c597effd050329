"""Compression to a quality budget: the largest sparsity whose bits per byte stay within
`--max-bpb-ratio` of dense on both evaluation texts.

Bisection over the sparsity, each point pruned afresh from the parent's weights and scored
on the job's evaluation spans: first 50% (the literature's usual point), then halving the
interval between the highest point within the budget and the lowest one over it, until it is
no wider than the search step (`--search-step`). Bisection assumes quality falls as sparsity
grows; near the budget it need not fall strictly (a few tenths of a percent of noise), and
every measured point goes into the report, so a stretch where it does not shows.
"""

from typing import Any

from app.errors import SparsegateError
from app.job.recipe import MAX_SPARSITY, SEARCH_STEP

FIRST = 0.5


def search(
    job: Any, prune: Any, evaluation: Any, dense: dict, budget: float, step: float = SEARCH_STEP
) -> dict:
    """Prunes `job.model` to the sparsity found, and returns what the report keeps."""
    import torch

    original = {k: v.detach().clone() for k, v in job.model.state_dict().items()}
    points: list[dict] = []
    best: tuple[float, dict] | None = None
    within, over = 0.0, 1.0  # dense is within any budget >= 1; all-zero weights are not
    sparsity = FIRST
    while True:
        job.model.load_state_dict(original)
        point = _probe(job, prune, evaluation, dense, sparsity, budget)
        points.append(point)
        if point["within"]:
            within = sparsity
            best = (sparsity, {k: v.detach().clone() for k, v in job.model.state_dict().items()})
        else:
            over = sparsity
        sparsity = round(min(round((within + over) / 2 / 0.0025) * 0.0025, MAX_SPARSITY), 4)
        if over - within <= step or sparsity <= within:  # narrow enough, or at the cap
            break
    if best is None:
        worst = min(points, key=lambda p: p["sparsity"])
        raise SparsegateError(
            f"no sparsity keeps both evaluation texts within x{budget:g} of dense bits per "
            f"byte: at {worst['sparsity']:.1%} the ratios are "
            + ", ".join(f"{k} x{v:.3f}" for k, v in worst["bpb_ratio"].items())
        )
    with torch.no_grad():
        job.model.load_state_dict(best[1])
    chosen = next(p for p in points if p["sparsity"] == best[0])
    return {"max_bpb_ratio": budget, "allocation": job.recipe.allocation, "step": step,
            "chosen": best[0], "points": sorted(points, key=lambda p: p["sparsity"]),
            "layer_sparsity": chosen.get("layer_sparsity")}  # fmt: skip


def _probe(job: Any, prune: Any, evaluation: Any, dense: dict, sparsity: float, budget: float):
    from app.job.stats import overall_sparsity

    job.extra.pop("layer_sparsity", None)
    prune.apply(job, sparsity)
    scores = evaluation.score(job.model, job.tokenizer, job.steps, f"at {sparsity:.1%}")
    ratios = {k: scores[k]["bpb"] / dense[k]["bpb"] for k in scores}
    point = {"sparsity": sparsity, "measured_sparsity": overall_sparsity(job.model),
             "bpb": {k: v["bpb"] for k, v in scores.items()}, "bpb_ratio": ratios,
             "within": max(ratios.values()) <= budget}  # fmt: skip
    if "layer_sparsity" in job.extra:
        point["layer_sparsity"] = job.extra["layer_sparsity"]
    return point
