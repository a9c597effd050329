"""Pruning methods, one class each, all backed by llm-compressor.

Wanda and SparseGPT are llm-compressor modifiers run by `oneshot` over calibration data.
Magnitude needs no data: it is Wanda's score |W|·sqrt(activation norm) with every
activation norm set to one, so it reuses llm-compressor's Wanda sparsifier directly
(per output row, unstructured or N:M).
"""

from typing import Any, ClassVar

import torch
from torch import nn

from app.job.stats import prunable_linears

# Modules llm-compressor prunes: the Linear layers inside the decoder blocks.
TARGETS = ["re:.*layers\\.\\d+\\..*"]


class Pruner:
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True

    def __init__(self, sparsity: float, nm: tuple[int, int] | None) -> None:
        self.sparsity = sparsity
        self.nm = nm

    @property
    def mask_structure(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "0:0"

    def modifiers(self) -> list[Any]:
        """llm-compressor modifiers for `oneshot`; empty when the method runs by itself."""
        return []

    def apply(self, model: nn.Module) -> None:
        """Prune without calibration data (methods that need none)."""


class Magnitude(Pruner):
    name = "magnitude"
    needs_calibration = False

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import sparsify_weight

        n, m = self.nm or (0, 0)
        for layer in prunable_linears(model).values():
            ones = {layer: torch.ones(layer.weight.shape[1])}
            layer.weight.data.copy_(sparsify_weight(layer, ones, self.sparsity, n, m))


class Wanda(Pruner):
    name = "wanda"

    def modifiers(self) -> list[Any]:
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return [
            WandaPruningModifier(
                sparsity=self.sparsity, mask_structure=self.mask_structure, targets=TARGETS
            )
        ]


class SparseGPT(Pruner):
    name = "sparsegpt"

    def modifiers(self) -> list[Any]:
        from llmcompressor.modifiers.obcq import SparseGPTModifier

        return [
            SparseGPTModifier(
                sparsity=self.sparsity, mask_structure=self.mask_structure, targets=TARGETS
            )
        ]


PRUNERS: dict[str, type[Pruner]] = {p.name: p for p in (Magnitude, Wanda, SparseGPT)}
