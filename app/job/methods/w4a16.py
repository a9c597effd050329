"""INT4 W4A16 with GPTQ: int4 weights in groups of 128, 16-bit activations. GPTQ's error
feedback: plain round-to-nearest int4 served far worse on Gemma 3 270M."""

from typing import Any

from app.job.pruning import TARGETS
from app.job.quantize import Quantization


class W4A16(Quantization):
    name = "w4a16"
    summary = "int4 weights in groups of 128 (GPTQ), 16-bit activations"

    def modifiers(self) -> list[Any]:
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(targets=TARGETS, scheme="W4A16")]
