"""How much to prune each decoder layer: the same share everywhere (uniform), or OWL.

OWL (outlier-weighted layerwise sparsity, Yin et al. 2024) prunes layers with more outlier
weights less. A weight's score is Wanda's, |W_ij| x ||X_j|| over calibration text; a layer's
outlier ratio D_l is the share of its scores above M times the layer's mean score. The ratios
are scaled to [0, 2 lambda], and layer l keeps 1 - target + (D_l - mean D) of its weights.

llm-compressor 0.14 has OWL (`sparsity_profile="owl"`), but its calibration pass runs during
the modifier's initialisation and fails ("Cannot invoke event before initializing"); so the
sparsities are computed here and handed to its modifiers as one value per target module.
"""

import re
from collections import defaultdict
from typing import Any

# The OWL paper's defaults for LLaMA (M 5, lambda 0.08).
OWL_M = 5.0
OWL_LAMBDA = 0.08
_LAYER = re.compile(r"layers\.(\d+)(?:\.|$)")


def owl_from_ratios(ratios: list[float], target: float, lmbda: float = OWL_LAMBDA) -> list[float]:
    """Each layer's sparsity from its outlier ratio: mean `target`, spread 2 x `lmbda`, more
    outliers pruned less (clipped to [0, 0.99])."""
    lo, hi = min(ratios), max(ratios)
    spread = [(r - lo) / (hi - lo) * 2 * lmbda if hi > lo else 0.0 for r in ratios]
    mean = sum(spread) / len(spread)
    return [min(max(target - (x - mean), 0.0), 0.99) for x in spread]


def outlier_ratios(model: Any, windows: list[list[int]], m: float = OWL_M) -> list[float]:
    """Per decoder layer, the share of its Wanda scores above `m` x their mean."""
    import torch

    from app.job.stats import prunable_linears

    linears = prunable_linears(model)
    norms = _input_norms(model, linears, windows)
    scores: dict[int, list] = defaultdict(list)
    with torch.no_grad():
        for name, linear in linears.items():
            layer = int(_LAYER.search(name)[1])
            scores[layer].append((linear.weight.abs() * norms[name]).flatten())
    out = []
    for layer in sorted(scores):
        s = torch.cat(scores[layer])
        out.append((s > m * s.mean()).float().mean().item())
    return out


def per_target(model: Any, targets: list[str], layer_sparsity: list[float]) -> list[float]:
    """Layer sparsities as llm-compressor's modifiers take a list: one per module that
    `targets` matches, in its order (a module's decoder layer decides its value)."""
    from compressed_tensors.utils import match_named_modules

    return [
        layer_sparsity[int(_LAYER.search(n)[1])] for n, _ in match_named_modules(model, targets)
    ]


def _input_norms(model: Any, linears: dict, windows: list[list[int]]) -> dict[str, Any]:
    """||X_j||_2 of every input feature of each Linear over the calibration tokens."""
    import torch

    squares = {name: torch.zeros(lin.in_features) for name, lin in linears.items()}

    def hook(name: str):
        def accumulate(_module, inputs, _output) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            squares[name] += x.pow(2).sum(dim=0).cpu()

        return accumulate

    handles = [lin.register_forward_hook(hook(name)) for name, lin in linears.items()]
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.tensor([window]))
    finally:
        for h in handles:
            h.remove()
    return {name: s.sqrt() for name, s in squares.items()}
