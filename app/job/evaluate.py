"""The same evaluation for dense and variant: perplexity on the same held-out windows."""

import math
from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: list[list[int]], on_window: Callable[[], None] = lambda: None
) -> float:
    nll = 0.0
    count = 0
    for window in windows:
        ids = torch.tensor([window])
        logits = model(ids).logits.float()[0, :-1]
        nll += nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += len(window) - 1
        on_window()
    return math.exp(nll / count)


def nm_pattern_holds(weight: torch.Tensor, n: int, m: int) -> bool:
    """Every group of M consecutive weights along the input dimension has >= N zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(-1)
    return bool((zeros >= n).all())
