"""What `sparsegate compress` is asked to do, validated before any work starts."""

import re
from pathlib import Path

from pydantic import BaseModel, field_validator, model_validator

from app.errors import SparsegateError
from app.job import methods
from app.job.methods import Method, Stage

MAX_SPARSITY = 0.95
# The budget search's default resolution: it stops when its interval is this narrow (about
# 6 points from 50%).
SEARCH_STEP = 0.025


class Recipe(BaseModel):
    # Method names (app/job/methods/): which pruning, quantization, recovery; or none.
    prune: str = "none"
    sparsity: float | None = None
    # unstructured; N:M, e.g. 2:4 (N zeros in every M weights); or channels (structured:
    # removes that share of MLP channels, scored by activations unless --prune magnitude)
    pattern: str = "unstructured"
    quant: str = "none"
    calibration_samples: int = 32
    seq_len: int = 256
    calibration_data: Path | None = None  # a text file; default: the built-in text below
    # mixed: Python docs and English prose, alternating (app/job/text.py); pydoc: docs alone
    calibration_text: str = "mixed"
    # lora: fine-tune LoRA adapters after (each) pruning step (language-model loss);
    # kd: distil from a teacher (the dense base by default), full-parameter, mask held
    recover: str = "none"
    steps: int = 100  # training steps per recovery
    teacher: str | None = None  # kd: registered teacher [default: the dense base]
    lr: float | None = None  # kd: learning rate [default: 5e-5]
    batch: int = 4  # kd: windows per step
    seed: int = 0  # kd: which windows, in which order
    temperature: float = 1.0  # kd: of the softmax on both sides of the KL
    ce_weight: float = 0.0  # kd: weight of the next-token cross-entropy added to the KL
    feature_weight: float = 0.0  # kd: weight of SquareHead's per-layer feature loss
    teacher_text: int = 0  # kd: windows of teacher-generated text added to the training text
    schedule: list[float] | None = None  # iterative: prune to each sparsity in turn
    allocation: str = "uniform"  # uniform, or owl: per-layer sparsity (app/job/allocation.py)
    # The largest sparsity whose bits per byte stay within this ratio to dense on both
    # evaluation texts, found by bisection (app/job/budget.py); instead of --sparsity.
    max_bpb_ratio: float | None = None
    search_step: float = SEARCH_STEP  # the budget search's resolution
    trim_vocab: int | None = None  # keep K vocabulary rows (embedding / LM head)
    vocab_corpus: Path | None = None  # text file or folder to rank tokens by; default: built in

    @field_validator("prune", "quant", "recover")
    @classmethod
    def _known(cls, value: str, info) -> str:
        if value != "none":
            methods.get(Stage(info.field_name), value)  # unknown: one line naming the choices
        return value

    def methods(self) -> list[Method]:
        """The chosen methods, in pipeline order (trim, prune, recover, quant)."""
        chosen: list[Method] = []
        if self.trim_vocab:
            chosen.append(methods.get(Stage.trim, "vocab")(self))
        for stage, name in ((Stage.prune, self.prune), (Stage.recover, self.recover),
                            (Stage.quant, self.quant)):  # fmt: skip
            if name != "none":
                chosen.append(methods.get(stage, name)(self))
        return chosen

    def method(self, stage: Stage) -> Method | None:
        return next((m for m in self.methods() if m.stage is stage), None)

    @property
    def nm(self) -> tuple[int, int] | None:
        match = re.fullmatch(r"(\d+):(\d+)", self.pattern)
        return (int(match[1]), int(match[2])) if match else None

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.trim_vocab is not None and self.trim_vocab < 1:
            raise SparsegateError(f"--trim-vocab must be a number of tokens, not {self.trim_vocab}")
        if self.pattern not in ("unstructured", "channels") and self.nm is None:
            raise SparsegateError(
                f"unknown pattern {self.pattern!r}: use unstructured, channels or N:M such as 2:4"
            )
        if self.nm is not None:
            n, m = self.nm
            if not 0 < n < m:
                raise SparsegateError(f"pattern {self.pattern}: N must be between 1 and M-1")
            implied = n / m
            if self.sparsity is None:
                self.sparsity = implied
            elif abs(self.sparsity - implied) > 1e-9:
                raise SparsegateError(
                    f"pattern {self.pattern} means {implied:.0%} sparsity, "
                    f"but --sparsity is {self.sparsity:g}"
                )
        if self.schedule is not None and self.prune != "none":
            if self.nm is not None or self.structured:
                raise SparsegateError("--schedule works with unstructured pruning only")
            if not self.schedule or any(
                b <= a for a, b in zip(self.schedule, self.schedule[1:], strict=False)
            ):
                raise SparsegateError("--schedule must increase, e.g. 0.3,0.5")
            if self.sparsity is not None and self.sparsity != self.schedule[-1]:
                raise SparsegateError("--schedule ends at the final sparsity; drop --sparsity")
            self.sparsity = self.schedule[-1]
        self._check_budget()
        if self.prune == "none":
            if self.sparsity is not None or self.pattern != "unstructured" or self.schedule:
                raise SparsegateError("--sparsity, --pattern and --schedule need a --prune method")
            if self.allocation != "uniform":
                raise SparsegateError("--allocation needs a --prune method")
            if self.quant == "none" and self.recover == "none" and not self.trim_vocab:
                raise SparsegateError("nothing to do: give --prune, --quant and/or --trim-vocab")
        else:
            if self.sparsity is None and self.max_bpb_ratio is None:
                self.sparsity = 0.5
            given = [x for x in [self.sparsity, *(self.schedule or [])] if x is not None]
            if not all(0.0 < x <= MAX_SPARSITY for x in given):
                raise SparsegateError(
                    f"--sparsity must be above 0.0 and at most {MAX_SPARSITY}, "
                    f"not {self.sparsity:g}"
                )
        if self.recover != "none" and self.steps < 1:
            raise SparsegateError(
                f"--steps must be at least 1 for {self.recover} recovery, not {self.steps}"
            )
        self._check_kd()
        for method in self.methods():
            method.check()
        if self.calibration_text not in ("mixed", "pydoc"):
            raise SparsegateError(
                f"--calibration-text must be mixed or pydoc, not {self.calibration_text!r}"
            )
        if self.calibration_data is not None and not self.calibration_data.is_file():
            raise SparsegateError(f"calibration data file {self.calibration_data} not found")
        if self.vocab_corpus is not None:
            if self.trim_vocab is None:
                raise SparsegateError("--vocab-corpus needs --trim-vocab")
            if not self.vocab_corpus.exists():
                raise SparsegateError(f"vocabulary corpus {self.vocab_corpus} not found")
        if self.calibration_samples < 1 or self.seq_len < 16:
            raise SparsegateError("need at least 1 calibration sample of at least 16 tokens")
        return self

    def _check_budget(self) -> None:
        if self.allocation not in ("uniform", "owl"):
            raise SparsegateError(f"--allocation must be uniform or owl, not {self.allocation!r}")
        if not 0.0025 <= self.search_step <= 0.25:
            raise SparsegateError(
                f"--search-step must be between 0.0025 and 0.25, not {self.search_step:g}"
            )
        if self.max_bpb_ratio is None:
            if self.search_step != SEARCH_STEP:
                raise SparsegateError("--search-step needs --max-bpb-ratio")
            return
        if self.prune == "none":
            raise SparsegateError("--max-bpb-ratio needs a --prune method")
        if self.max_bpb_ratio < 1.0:
            raise SparsegateError(
                f"--max-bpb-ratio must be at least 1 (dense itself), not {self.max_bpb_ratio:g}"
            )
        if self.sparsity is not None or self.schedule or self.pattern != "unstructured":
            raise SparsegateError(
                "--max-bpb-ratio chooses an unstructured sparsity: drop --sparsity, --pattern "
                "and --schedule"
            )

    def _check_kd(self) -> None:
        kd_set = {
            "--teacher": self.teacher is not None, "--lr": self.lr is not None,
            "--batch": self.batch != 4, "--seed": self.seed != 0,
            "--temperature": self.temperature != 1.0, "--ce-weight": self.ce_weight != 0.0,
            "--feature-weight": self.feature_weight != 0.0,
            "--teacher-text": self.teacher_text != 0,
        }  # fmt: skip
        if self.recover != "kd" and (given := [k for k, v in kd_set.items() if v]):
            raise SparsegateError(f"{', '.join(given)}: only with --recover kd")

    @property
    def structured(self) -> bool:
        return self.pattern == "channels"

    def default_name(self, base: str) -> str:
        parts = [base]
        if self.trim_vocab:
            k = self.trim_vocab
            parts.append(f"trim{k // 1024}k" if k % 1024 == 0 else f"trim{k}")
        if self.prune != "none":
            shape = (
                self.pattern.replace(":", "of") if self.nm else f"{(self.sparsity or 0) * 100:.0f}"
            )
            if self.structured:
                shape = f"ch{shape}"
            if self.max_bpb_ratio is not None:  # the sparsity is found by the job
                shape = f"bpb{self.max_bpb_ratio * 100:.0f}"
            owl = "owl" if self.allocation == "owl" else ""
            parts.append(f"{self.prune}{owl}{shape}")
        if self.schedule:
            parts.append("iter")
        if self.recover != "none":
            parts.append(self.recover + ("feat" if self.feature_weight else ""))
        if self.quant != "none":
            parts.append(self.quant)
        return "-".join(parts)
