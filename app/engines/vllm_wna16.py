"""W4A16 on CPUs where vLLM's own int4 kernel cannot run it as evaluated (part of the vLLM
plugin).

vLLM 0.32's CPU wheel loads one of three kernel libraries by the CPU's instruction set; the
AVX2 one (CPUs without AVX-512, such as the AMD EPYC hosts this project's CI now runs on) has
no `cpu_gemm_wna16`, yet vLLM still picks `CPUWNA16LinearKernel` for weight-only int4 layers,
and the first request kills the engine; where the op exists it has no float32 path ("not
implemented for 'Float'"), which kills float32 engines the same way; and on AMX CPUs it runs
the layers as W4A8 or, told not to, crashed (`_amx_as_w4a16`). There this kernel takes the
layer instead: it dequantizes the packed weights once at load, (q - 8) x scale per group, and
runs a dense matmul in the activation dtype. The file on disk stays int4; memory and speed
are the dense model's.

This module is imported by vLLM's processes through the plugin, never by the gateway."""

import torch
from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import (
    MPLinearKernel,
    MPLinearLayerConfig,
)
from vllm.model_executor.layers.quantization.utils import replace_parameter
from vllm.model_executor.layers.quantization.utils.quant_utils import (
    unpack_quantized_values_into_int32,
)
from vllm.platforms import current_platform
from vllm.scalar_type import ScalarType, scalar_types


def vllm_int4_kernel_missing() -> bool:
    """Whether the loaded vLLM kernel library lacks `cpu_gemm_wna16` (its AVX2 build)."""
    try:
        torch.ops._C.cpu_gemm_wna16  # noqa: B018 (an attribute lookup is the test)
    except (AttributeError, RuntimeError):
        return True
    return False


def dequantize(
    packed: torch.Tensor, scales: torch.Tensor, wtype: ScalarType, group_size: int
) -> torch.Tensor:
    """[out, in/pack] int32 words packed along the input, [out, groups] scales -> [out, in]."""
    q = unpack_quantized_values_into_int32(packed, wtype, packed_dim=1)
    values = (q - wtype.bias).to(torch.float32)
    size_in = values.shape[1]
    group = size_in if group_size == -1 else group_size
    return values * scales.to(torch.float32).repeat_interleave(group, dim=1)[:, :size_in]


def _amx_as_w4a16() -> bool:
    """On AMX CPUs vLLM runs int4 layers as W4A8 (int8 activations) unless told not to, and
    told not to (`VLLM_CPU_INT4_W4A8=0`, what engines get by default) its AMX int4 path
    killed the worker at the first request here (a tiny model's 64-wide projections); so
    where W4A16 is to be served as W4A16 on AMX, this kernel serves it."""
    from vllm import envs

    return not envs.VLLM_CPU_INT4_W4A8 and torch.cpu._is_amx_tile_supported()


class DequantizedWNA16Kernel(MPLinearKernel):
    @classmethod
    def get_min_capability(cls) -> int:
        return -1

    @classmethod
    def can_implement(cls, c: MPLinearLayerConfig) -> tuple[bool, str | None]:
        if not current_platform.is_cpu():
            return False, "CPU only"
        if not (vllm_int4_kernel_missing() or c.act_type == torch.float32 or _amx_as_w4a16()):
            return False, "vLLM's own CPU int4 kernel serves these layers"
        if c.zero_points or c.weight_type not in (scalar_types.uint4b8, scalar_types.uint8b128):
            return False, f"symmetric int4/int8 weights only, not {c.weight_type}"
        return True, None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        packed, scales, _ = self._get_weight_params(layer)
        words = packed.data if packed.input_dim == 1 else packed.data.t()
        per_group = scales.data if scales.output_dim == 0 else scales.data.t()
        dense = dequantize(words, per_group, self.config.weight_type, self.config.group_size)
        weight = torch.nn.Parameter(dense.to(self.config.act_type), requires_grad=False)
        replace_parameter(layer, self.w_q_name, weight)

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.nn.functional.linear(x, getattr(layer, self.w_q_name), bias)
