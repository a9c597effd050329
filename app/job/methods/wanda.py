"""Wanda: |W| times the norm of its input activation over calibration text (llm-compressor's
WandaPruningModifier); for channels, each channel's activation norm times its
down-projection column norm."""

from typing import Any

from app.job.methods import Job
from app.job.pruning import TARGETS, Pruning


class Wanda(Pruning):
    name = "wanda"
    summary = "|weight| × activation norm (calibration); unstructured, N:M or channels"
    patterns = ("unstructured", "n:m", "channels")
    allocations = ("uniform", "owl")

    def prune(self, job: Job, target: float) -> None:
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        from app.job.oneshot import oneshot

        modifier = WandaPruningModifier(
            sparsity=self.sparsity_for(job, target),
            mask_structure=self.mask_structure,
            targets=TARGETS,
        )
        oneshot(job.model, [modifier], job.calib, self.recipe.seq_len)

    def channel_scores(self, job: Job) -> list[Any]:
        from app.job.structured import channel_scores

        return channel_scores(job.model, job.calib, use_activations=True)
