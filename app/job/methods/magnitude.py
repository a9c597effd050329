"""Magnitude pruning: no calibration data. Its score is Wanda's |W|·sqrt(activation norm)
with every activation norm set to one, so it reuses llm-compressor's Wanda sparsifier
(per output row, unstructured or N:M); for channels, the down-projection's column norms."""

from typing import Any

from app.job.methods import Job
from app.job.pruning import Pruning


class Magnitude(Pruning):
    name = "magnitude"
    summary = "smallest |weight| per row (no data); unstructured, N:M or channels"
    patterns = ("unstructured", "n:m", "channels")

    def prune(self, job: Job, target: float) -> None:
        import torch
        from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import sparsify_weight

        from app.job.stats import prunable_linears

        n, m = self.recipe.nm or (0, 0)
        with torch.no_grad():
            for layer in prunable_linears(job.model).values():
                ones = {layer: torch.ones(layer.weight.shape[1])}
                layer.weight.data.copy_(sparsify_weight(layer, ones, target, n, m))

    def channel_scores(self, job: Job) -> list[Any]:
        from app.job.structured import channel_scores

        return channel_scores(job.model, job.calib, use_activations=False)
