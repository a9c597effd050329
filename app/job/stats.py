"""Figures measured on a model: parameter count and sparsity of its prunable weights."""

import torch
from torch import nn


def param_count(model: nn.Module) -> int:
    # parameters() yields tied tensors once (Gemma ties lm_head to the embedding).
    return sum(p.numel() for p in model.parameters())


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the decoder blocks: what pruning methods act on."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in f".{name}"
    }


@torch.no_grad()
def sparsity_by_layer(model: nn.Module) -> dict[str, float]:
    return {
        name: (m.weight == 0).float().mean().item() for name, m in prunable_linears(model).items()
    }


@torch.no_grad()
def overall_sparsity(model: nn.Module) -> float:
    zeros = total = 0
    for m in prunable_linears(model).values():
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / total if total else 0.0
