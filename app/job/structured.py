"""Structured pruning: remove whole MLP channels, giving a genuinely smaller model.

Unstructured zeros cost the same on every current kernel; removed channels do not. A
channel's importance is the norm of its activation over calibration text (what Wanda
weighs a weight by) times the norm of its down-projection column; every layer keeps the
same number of channels because the config has one `intermediate_size`, which vLLM reads.
"""

import torch
from torch import nn

# Kept channels are a multiple of this: int4 groups (128) and vector kernels stay aligned.
ALIGN = 128


def _mlps(model: nn.Module) -> list[nn.Module]:
    mlps = [m for name, m in model.named_modules() if name.endswith(".mlp")]
    if not mlps or not all(hasattr(m, "down_proj") for m in mlps):
        raise ValueError("channel pruning supports gated MLPs (gate/up/down_proj) only")
    return mlps


@torch.no_grad()
def channel_scores(
    model: nn.Module, windows: list[list[int]], use_activations: bool
) -> list[torch.Tensor]:
    mlps = _mlps(model)
    sq = [torch.zeros(m.down_proj.in_features) for m in mlps]
    hooks = []
    if use_activations:
        for i, m in enumerate(mlps):

            def hook(_mod, args, _out, i=i):
                sq[i] += args[0].detach().float().pow(2).reshape(-1, sq[i].numel()).sum(0)

            hooks.append(m.down_proj.register_forward_hook(hook))
        try:
            for window in windows:
                model(torch.tensor([window]))
        finally:
            for h in hooks:
                h.remove()
    else:
        sq = [torch.ones_like(s) for s in sq]
    return [
        s.sqrt() * m.down_proj.weight.float().norm(dim=0) for s, m in zip(sq, mlps, strict=True)
    ]


def kept_channels(total: int, sparsity: float) -> int:
    keep = int(total * (1 - sparsity)) // ALIGN * ALIGN
    return max(ALIGN, min(keep, total))


@torch.no_grad()
def prune_channels(model: nn.Module, scores: list[torch.Tensor], sparsity: float) -> int:
    """Slice every MLP to its top channels; returns the new intermediate size."""
    mlps = _mlps(model)
    keep = kept_channels(mlps[0].down_proj.in_features, sparsity)
    for m, score in zip(mlps, scores, strict=True):
        idx = score.topk(keep).indices.sort().values
        for proj in (m.gate_proj, m.up_proj):
            proj.weight = nn.Parameter(proj.weight[idx].clone())
            proj.out_features = keep
        m.down_proj.weight = nn.Parameter(m.down_proj.weight[:, idx].clone())
        m.down_proj.in_features = keep
    model.config.intermediate_size = keep
    return keep
