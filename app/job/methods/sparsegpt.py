"""SparseGPT: second-order one-shot pruning with weight updates (llm-compressor's
SparseGPTModifier). Unstructured or N:M only: it has no channel variant here."""

from app.job.methods import Job
from app.job.pruning import TARGETS, Pruning


class SparseGPT(Pruning):
    name = "sparsegpt"
    summary = "Hessian-aware one-shot with weight updates (calibration); unstructured or N:M"
    patterns = ("unstructured", "n:m")
    allocations = ("uniform", "owl")

    def prune(self, job: Job, target: float) -> None:
        from llmcompressor.modifiers.obcq import SparseGPTModifier

        from app.job.oneshot import oneshot

        modifier = SparseGPTModifier(
            sparsity=self.sparsity_for(job, target),
            mask_structure=self.mask_structure,
            targets=TARGETS,
        )
        oneshot(job.model, [modifier], job.calib, self.recipe.seq_len)
