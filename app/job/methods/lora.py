"""LoRA recovery: fine-tune LoRA adapters (peft) on the calibration text with the language-
model loss, merge them, and write the pruned zeros back (`app/job/recover.py`). On an
unpruned model it is the control: what any fine-tuning on this text buys."""

from typing import Any

from app.job.methods import Job, Method, Stage, holds_zeros


class LoRA(Method):
    name = "lora"
    stage = Stage.recover
    summary = "LoRA adapters, language-model loss, merged with the mask re-applied"

    def apply(self, job: Job, target: float | None = None) -> dict[str, Any] | None:
        from app.job.recover import lora_recover

        target = target or 0.0
        held = holds_zeros(job, target)
        label = f"recovery ({target:.0%})" if target else "recovery" if held else "fine-tuning"
        with job.steps.step(f"LoRA {label}", total=self.recipe.steps) as advance:
            job.model, recovery = lora_recover(
                job.model, job.calib, self.recipe.steps,
                keep_mask=held, on_step=advance,
            )  # fmt: skip
        return {"method": self.name, "sparsity": target, **recovery.as_dict()}
