"""Quantization schemes as llm-compressor modifiers (compressed-tensors output vLLM loads)."""

from typing import Any

from app.job.pruning import TARGETS
from app.job.recipe import QuantScheme


def quant_modifiers(scheme: QuantScheme) -> list[Any]:
    if scheme is QuantScheme.w8a8:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        # Per-channel int8 weights, dynamic per-token int8 activations: no calibration
        # needed, and zeros quantize to exactly zero, so pruning survives.
        return [QuantizationModifier(targets=TARGETS, scheme="W8A8")]
    if scheme is QuantScheme.w4a16:
        from llmcompressor.modifiers.gptq import GPTQModifier

        # Groups of 128 with GPTQ's error feedback: plain round-to-nearest int4 served
        # far worse on Gemma 3 270M.
        return [GPTQModifier(targets=TARGETS, scheme="W4A16")]
    return []
