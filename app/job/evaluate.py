"""The same evaluation for dense and variant: the same held-out text spans, scored in bits
per byte (and per-token perplexity); the N:M pattern check."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from app.texts.bpb import bits_per_byte
from app.texts.evaluation import encode_spans


def nm_pattern_holds(weight: torch.Tensor, n: int, m: int) -> bool:
    """Every group of M consecutive weights along the input dimension has >= N zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(-1)
    return bool((zeros >= n).all())


@dataclass(frozen=True)
class Score:
    """Negative log-likelihood of a set of text spans, in nats, with their size in tokens
    and bytes: bits per byte compares tokenizers; perplexity only models that share one."""

    nll: float
    tokens: int
    n_bytes: int

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll, self.n_bytes)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    def as_dict(self) -> dict[str, float]:
        return {"bpb": self.bits_per_byte, "ppl": self.ppl, "tokens": self.tokens,
                "bytes": self.n_bytes}  # fmt: skip


@torch.no_grad()
def score_spans(
    model: nn.Module,
    tokenizer,
    spans: list[str],
    on_span: Callable[[], None] = lambda: None,
) -> Score:
    if tokenizer.bos_token_id is None:
        raise ValueError("bits per byte needs a BOS token to score a span's first token")
    nll = 0.0
    tokens = 0
    for ids in encode_spans(tokenizer, spans):
        x = torch.tensor([ids])
        logits = model(x).logits.float()[0, :-1]
        nll += nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        tokens += len(ids) - 1
        on_span()
    return Score(nll, tokens, sum(len(s.encode()) for s in spans))
