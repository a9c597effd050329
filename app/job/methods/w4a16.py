"""INT4 W4A16 with GPTQ: int4 weights in groups of 128 (64 or 32 where a model's layer widths
need it), 16-bit activations. GPTQ's error feedback: plain round-to-nearest int4 served far
worse on Gemma 3 270M."""

from typing import Any

from app.errors import SparsegateError
from app.job.methods import Job
from app.job.pruning import TARGETS
from app.job.quantize import Quantization

# A group must divide every quantized layer's input columns: SmolLM2-135M's are 576 wide
# (4.5 groups of 128). vLLM's CPU int4 kernel takes any even group size; larger groups store
# fewer scales.
GROUP_SIZES = (128, 64, 32)


def group_size(columns: set[int]) -> int:
    """The largest of GROUP_SIZES that divides every width in `columns`."""
    for size in GROUP_SIZES:
        if all(c % size == 0 for c in columns):
            return size
    raise SparsegateError(
        f"--quant w4a16 needs layer widths divisible by {GROUP_SIZES[-1]}; this model's are "
        + ", ".join(map(str, sorted(columns)))
    )


class W4A16(Quantization):
    name = "w4a16"
    summary = "int4 weights in groups of 128, 64 or 32 (GPTQ), 16-bit activations"

    def modifiers(self, job: Job) -> list[Any]:
        from compressed_tensors.quantization import preset_name_to_scheme
        from llmcompressor.modifiers.gptq import GPTQModifier

        from app.job.stats import prunable_linears

        scheme = preset_name_to_scheme("W4A16", TARGETS)
        columns = {m.in_features for m in prunable_linears(job.model).values()}
        scheme.weights.group_size = group_size(columns)
        return [GPTQModifier(config_groups={"group_0": scheme})]
