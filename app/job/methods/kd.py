"""KD recovery: distil from a teacher (the dense base, or --teacher), forward KL on logits
with optional cross-entropy and SquareHead feature terms, full-parameter on the decoder
blocks, the pruned zeros held at every step (`app/job/distill.py`)."""

from typing import Any

from app.errors import SparsegateError
from app.job.methods import Job, Method, Stage, holds_zeros


class KD(Method):
    name = "kd"
    stage = Stage.recover
    summary = "distillation from the dense base (or --teacher), mask held at every step"

    def check(self) -> None:
        r = self.recipe
        if r.lr is not None and not 0 < r.lr < 1:
            raise SparsegateError(f"--lr must be between 0 and 1, not {r.lr:g}")
        if r.batch < 1 or r.temperature <= 0:
            raise SparsegateError("--batch must be at least 1 and --temperature above 0")
        if r.ce_weight < 0 or r.feature_weight < 0 or r.teacher_text < 0:
            raise SparsegateError("--ce-weight, --feature-weight and --teacher-text must be >= 0")

    def prepare(self, job: Job) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from app.job.distill import token_map

        r = self.recipe
        # The teacher is the dense base: a pruned parent has one to learn from.
        itself = r.teacher is None and job.parent.name == job.parent.base
        if itself and r.prune == "none" and not r.trim_vocab:
            raise SparsegateError(
                "--recover kd on an unpruned, untrimmed model distils it into itself: "
                "give --prune or --trim-vocab (or another --teacher)"
            )
        name = self.recipe.teacher or job.parent.base
        folder = job.registry.servable_path(name)  # an unknown teacher is refused here
        with job.steps.step(f"Loading the teacher {name}"):
            teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder)
        token_map(job.tokenizer, tokenizer)  # another tokenizer is refused before any work
        job.extra["teacher"] = (name, teacher, tokenizer)

    def apply(self, job: Job, target: float | None = None) -> dict[str, Any] | None:
        from app.job.distill import KDSettings, kd_recover, teacher_windows, token_map

        r = self.recipe
        target = target or 0.0
        name, teacher, t_tokenizer = job.extra["teacher"]
        vocab_map = token_map(job.tokenizer, t_tokenizer)  # the student may be trimmed by now
        windows = list(job.calib)
        if r.teacher_text:
            with job.steps.step("Generating teacher text", total=r.teacher_text) as advance:
                prompts = teacher_prompts(job.tokenizer, job.calib, r.teacher_text)
                windows += teacher_windows(
                    teacher, t_tokenizer, job.tokenizer, prompts, r.seq_len, r.seed,
                    on_window=advance,
                )  # fmt: skip
        cfg = KDSettings(
            steps=r.steps, lr=r.lr or KDSettings.lr, batch=r.batch, seed=r.seed,
            temperature=r.temperature, ce_weight=r.ce_weight, feature_weight=r.feature_weight,
        )  # fmt: skip
        label = f"recovery ({target:.0%})" if target else "recovery"
        with job.steps.step(f"KD {label} from {name}", total=r.steps) as advance:
            report = kd_recover(
                job.model, teacher, windows, cfg, vocab_map=vocab_map,
                keep_mask=holds_zeros(job, target),
                on_step=lambda loss: advance(1, f"loss {loss:.3f}"),
            )  # fmt: skip
        settings = {k: getattr(cfg, k) for k in ("lr", "batch", "temperature", "ce_weight",
                                                 "feature_weight", "seed")}  # fmt: skip
        return {
            "method": self.name, "sparsity": target, "teacher": name, **report.as_dict(),
            **settings, "windows": len(windows), "teacher_windows": len(windows) - len(job.calib),
        }  # fmt: skip


def teacher_prompts(tokenizer: Any, calib: list[list[int]], n: int) -> list[str]:
    """The openings of calibration windows as text for the teacher to continue: without
    special tokens, which the teacher's tokenizer adds again (a BOS twice, on Gemma)."""
    return [
        tokenizer.decode(calib[i % len(calib)][:16], skip_special_tokens=True) for i in range(n)
    ]
