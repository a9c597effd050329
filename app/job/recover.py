"""Recovery: fine-tune LoRA adapters (peft) on calibration text after pruning, merge them,
and re-apply the pruning mask so the merged model keeps exactly its sparsity."""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from app.job.stats import overall_sparsity, prunable_linears

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Recovery:
    steps: int
    loss_first: float
    loss_last: float
    sparsity_before: float
    sparsity_merged: float  # after merging, before the mask is re-applied
    sparsity_after: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def lora_recover(
    model: nn.Module,
    windows: list[list[int]],
    steps: int,
    *,
    rank: int = 16,
    lr: float = 2e-4,
    keep_mask: bool = True,
    on_step: Callable[[], None] = lambda: None,
) -> tuple[nn.Module, Recovery]:
    from peft import LoraConfig, get_peft_model

    masks = {n: m.weight != 0 for n, m in prunable_linears(model).items()} if keep_mask else {}
    sparsity_before = overall_sparsity(model)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    losses = []
    for step in range(steps):
        ids = torch.tensor([windows[step % len(windows)]])
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        on_step()
    merged = peft_model.merge_and_unload().eval()
    sparsity_merged = overall_sparsity(merged)
    with torch.no_grad():
        for name, layer in prunable_linears(merged).items():
            if name in masks:
                # masked_fill, not a multiply: -w * 0 is -0.0, a non-zero bit pattern at rest.
                layer.weight.masked_fill_(~masks[name], 0.0)
    return merged, Recovery(
        steps=steps,
        loss_first=losses[0] if losses else float("nan"),
        loss_last=sum(losses[-10:]) / len(losses[-10:]) if losses else float("nan"),
        sparsity_before=sparsity_before,
        sparsity_merged=sparsity_merged,
        sparsity_after=overall_sparsity(merged),
    )
