"""What the quantization methods share (`app/job/methods/w8a8.py`, `w4a16.py`): llm-compressor
modifiers run last, with the zeros of pruning written back (GPTQ's error feedback would
write into pruned positions). Output: compressed-tensors checkpoints vLLM loads."""

from typing import Any

from app.job.methods import Job, Method, Stage


class Quantization(Method):
    stage = Stage.quant

    def modifiers(self, job: Job) -> list[Any]:
        raise NotImplementedError

    def apply(self, job: Job, target: float | None = None) -> dict[str, Any] | None:
        import torch

        from app.job.oneshot import oneshot
        from app.job.stats import prunable_linears

        masks = {n: m.weight != 0 for n, m in prunable_linears(job.model).items()}
        with job.steps.step(f"Quantizing ({self.name})"):
            oneshot(job.model, self.modifiers(job), job.calib, self.recipe.seq_len)
            if not self.recipe.structured:
                with torch.no_grad():
                    for n, m in prunable_linears(job.model).items():
                        m.weight.masked_fill_(~masks[n], 0.0)
        return None
