"""Does a converted checkpoint compute what its source computes? Compare logits on real text."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class Fidelity:
    relative_logit_error: float  # ||converted - reference|| / ||reference||, over all positions
    top1_agreement: float  # share of positions where both predict the same next token
    ppl_reference: float
    ppl_converted: float
    tokens: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def compare_logits(
    reference: nn.Module,
    converted: nn.Module,
    windows: list[list[int]],
    on_window: Callable[[], None] = lambda: None,
) -> Fidelity:
    diff_sq = ref_sq = 0.0
    agree = positions = 0
    nll_ref = nll_conv = 0.0
    for window in windows:
        ids = torch.tensor([window])
        a = reference(ids).logits.float()[0]
        b = converted(ids).logits.float()[0]
        diff_sq += (b - a).pow(2).sum().item()
        ref_sq += a.pow(2).sum().item()
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0]
        targets = ids[0, 1:]
        nll_ref += nn.functional.cross_entropy(a[:-1], targets, reduction="sum").item()
        nll_conv += nn.functional.cross_entropy(b[:-1], targets, reduction="sum").item()
        on_window()
    scored = positions - len(windows)
    return Fidelity(
        relative_logit_error=math.sqrt(diff_sq / ref_sq),
        top1_agreement=agree / positions,
        ppl_reference=math.exp(nll_ref / scored),
        ppl_converted=math.exp(nll_conv / scored),
        tokens=scored,
    )
