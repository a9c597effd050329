"""INT8 W8A8: per-channel int8 weights, dynamic per-token int8 activations. No calibration
needed, and zeros quantize to exactly zero, so pruning survives."""

from typing import Any

from app.job.methods import Job
from app.job.pruning import TARGETS
from app.job.quantize import Quantization


class W8A8(Quantization):
    name = "w8a8"
    summary = "int8 weights per channel, int8 activations per token (dynamic)"

    def modifiers(self, job: Job) -> list[Any]:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(targets=TARGETS, scheme="W8A8")]
