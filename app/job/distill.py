"""Recovery by distillation from a teacher (the dense base by default), mask held.

Full-parameter sparse fine-tuning of the decoder blocks (the embedding / LM head stays
frozen: it is not pruned, it is tied on Gemma, and its optimizer state would be the
largest part of the job's memory). The loss is forward KL from the teacher's next-token
distribution at a temperature (Minitron), plus, optionally, the language-model
cross-entropy and SquareHead's per-layer feature loss (hidden-state MSE normalised by the
teacher's, as in Sparse-Llama's recovery). Pruned positions get no gradient and are
written back to zero after every optimizer step, so the zeros after training are exactly
the zeros before (unstructured and N:M alike); channel-pruned and vocabulary-trimmed
students have no zeros to hold and train the same way.

A student whose vocabulary was trimmed reads the teacher through its token map: the
teacher sees the same text (student ids mapped back to its own) and its logits are
restricted to the student's rows before the softmax.

llm-compressor removed its distillation code (0.11 and later), hence this module.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.errors import SparsegateError
from app.job.stats import overall_sparsity, prunable_linears


@dataclass
class KDSettings:
    steps: int
    lr: float = 5e-5
    batch: int = 4
    seed: int = 0
    temperature: float = 1.0
    ce_weight: float = 0.0  # cross-entropy on the text's next tokens, added to the KL
    feature_weight: float = 0.0  # SquareHead: per-layer hidden-state MSE / teacher's


@dataclass
class KDReport:
    steps: int
    losses: list[float] = field(default_factory=list)  # total loss per step
    kl: list[float] = field(default_factory=list)  # its KL part per step
    sparsity_before: float = 0.0
    sparsity_after: float = 0.0
    zeros_held: bool = True  # the zero positions after training are exactly those before
    seconds_per_step: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loss_first"] = self.losses[0] if self.losses else None
        out["loss_last"] = sum(self.losses[-5:]) / len(self.losses[-5:]) if self.losses else None
        return out


def token_map(student_tokenizer: Any, teacher_tokenizer: Any) -> torch.Tensor | None:
    """Teacher id of every student id; None when the vocabularies are the same. Refuses a
    teacher whose vocabulary does not hold every student token."""
    s_vocab = student_tokenizer.get_vocab()
    t_vocab = teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return None
    missing = [tok for tok in s_vocab if tok not in t_vocab]
    if missing:
        raise SparsegateError(
            f"the teacher's tokenizer is not the student's (nor a superset of a trimmed one): "
            f"{len(missing)} student tokens are unknown to it, e.g. {missing[:3]}"
        )
    ids = torch.empty(len(s_vocab), dtype=torch.long)
    for tok, i in s_vocab.items():
        ids[i] = t_vocab[tok]
    return ids


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight != 0 for n, m in prunable_linears(model).items()}


def kd_loss(
    student_out: Any,
    teacher_out: Any,
    ids: torch.Tensor,
    cfg: KDSettings,
    vocab_map: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, its KL part) for one batch; logits predict the next token."""
    s_logits = student_out.logits[:, :-1].float()
    t_logits = teacher_out.logits[:, :-1].float()
    if vocab_map is not None:
        t_logits = t_logits[..., vocab_map]
    t = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(s_logits / t, -1).flatten(0, 1),
        F.log_softmax(t_logits / t, -1).flatten(0, 1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    loss = kl
    if cfg.ce_weight:
        loss = loss + cfg.ce_weight * F.cross_entropy(s_logits.flatten(0, 1), ids[:, 1:].flatten())
    if cfg.feature_weight:
        pairs = list(zip(student_out.hidden_states[1:], teacher_out.hidden_states[1:], strict=True))
        feat = sum(
            F.mse_loss(hs.float(), ht.float()) / ht.float().pow(2).mean().clamp_min(1e-8)
            for hs, ht in pairs
        ) / len(pairs)
        loss = loss + cfg.feature_weight * feat
    return loss, kl


def kd_recover(
    student: nn.Module,
    teacher: nn.Module,
    windows: list[list[int]],
    cfg: KDSettings,
    *,
    vocab_map: torch.Tensor | None = None,
    keep_mask: bool = True,
    on_step: Callable[[float], None] = lambda loss: None,
) -> KDReport:
    """Distil `teacher` into `student` in place over `windows` (token ids of the student)."""
    import time

    if cfg.steps < 1:
        raise SparsegateError(f"--steps must be at least 1 for KD recovery, not {cfg.steps}")
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    masks = _masks(student) if keep_mask else {}
    report = KDReport(steps=cfg.steps, sparsity_before=overall_sparsity(student))
    teacher.eval().requires_grad_(False)
    trained = [p for n, p in student.named_parameters() if ".layers." in f".{n}"]
    student.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    masked = {n: m for n, m in prunable_linears(student).items() if n in masks}
    hooks = [
        layer.weight.register_hook(lambda g, mask=masks[name]: g * mask)
        for name, layer in masked.items()
    ]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=0.0)
    student.train()
    features = cfg.feature_weight > 0
    start = time.monotonic()
    try:
        for step in range(cfg.steps):
            pick = torch.randint(len(windows), (cfg.batch,), generator=generator).tolist()
            ids = torch.tensor([windows[i] for i in pick])
            with torch.no_grad():
                t_ids = vocab_map[ids] if vocab_map is not None else ids
                t_out = teacher(input_ids=t_ids, output_hidden_states=features)
            s_out = student(input_ids=ids, output_hidden_states=features)
            loss, kl = kd_loss(s_out, t_out, ids, cfg, vocab_map)
            if not torch.isfinite(loss):
                raise SparsegateError(
                    f"KD loss is {loss.item()} at step {step + 1} of {cfg.steps}: "
                    "nothing registered (try a lower --lr)"
                )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, layer in masked.items():
                    # masked_fill, not a multiply: -w * 0 is -0.0, non-zero at rest.
                    layer.weight.masked_fill_(~masks[name], 0.0)
            report.losses.append(loss.item())
            report.kl.append(kl.item())
            on_step(loss.item())
    finally:
        for h in hooks:
            h.remove()
        student.requires_grad_(False)
        student.eval()
    report.seconds_per_step = (time.monotonic() - start) / cfg.steps
    report.sparsity_after = overall_sparsity(student)
    if masks:
        after = _masks(student)
        report.zeros_held = all(torch.equal(after[n], masks[n]) for n in masks)
        if not report.zeros_held:
            raise SparsegateError("internal: KD changed the pruned positions")
    return report


@torch.no_grad()
def mean_kl(
    student: nn.Module,
    teacher: nn.Module,
    windows: list[list[int]],
    vocab_map: torch.Tensor | None = None,
) -> float:
    """Mean per-token KL(teacher || student) over `windows` (held-out text)."""
    total = 0.0
    for w in windows:
        ids = torch.tensor([w])
        t_ids = vocab_map[ids] if vocab_map is not None else ids
        _, kl = kd_loss(
            student(input_ids=ids), teacher(input_ids=t_ids), ids, KDSettings(steps=1), vocab_map
        )
        total += kl.item()
    return total / len(windows)


GENERATION_BATCH = 8  # prompts the teacher continues at once


@torch.no_grad()
def teacher_windows(
    teacher: nn.Module,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    prompts: list[str],
    seq_len: int,
    seed: int,
    on_window: Callable[[], None] = lambda: None,
) -> list[list[int]]:
    """Text the teacher writes after each prompt (sampled, top-p 0.95, seeded), re-read with
    the student's tokenizer into windows of `seq_len` tokens; a text that re-reads shorter
    is dropped. Prompts go GENERATION_BATCH at a time, each batch cut to its shortest
    prompt so that no padding enters generation (left padding would shift positions)."""
    torch.manual_seed(seed)
    out: list[list[int]] = []
    for start in range(0, len(prompts), GENERATION_BATCH):
        batch = prompts[start : start + GENERATION_BATCH]
        encoded = [teacher_tokenizer(p).input_ids for p in batch]
        shortest = min(len(ids) for ids in encoded)
        ids = torch.tensor([e[:shortest] for e in encoded])
        # The +64 covers a student tokenizer that reads the same text in fewer tokens.
        generated = teacher.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.95,
            max_new_tokens=seq_len + 64, min_new_tokens=seq_len + 64,
            pad_token_id=teacher_tokenizer.pad_token_id,
        )  # fmt: skip
        for row in generated:
            text = teacher_tokenizer.decode(row, skip_special_tokens=True)
            window = student_tokenizer(text, add_special_tokens=False).input_ids[:seq_len]
            if len(window) == seq_len:
                out.append(window)
            on_window()
    return out
