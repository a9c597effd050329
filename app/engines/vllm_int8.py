"""W8A8 on CPUs where vLLM's int8 GEMM loses products (part of the vLLM plugin).

vLLM's CPU W8A8 kernel runs oneDNN's s8 x s8 GEMM. On CPUs without VNNI (AVX2-only hosts
such as the AMD EPYC Zen 3 machines this project's CI has run on), oneDNN multiplies byte
pairs with `vpmaddubsw`, whose 16-bit sums saturate: its documentation warns of this
("int8 computations on systems without Intel DL Boost"). With `ONEDNN_MAX_CPU_ISA=AVX2`,
a random 576 x 1536 int8 layer's outputs came out up to half the largest output off, and
SmolLM2-135M's trimmed 2:4 W8A8 variant served 2.0% worse bits per byte than the job
evaluated (on such a host, in CI).

Where a probe shows that loss, this kernel takes the layer: the same dynamic per-token
activation quantization as vLLM's (its own op), then a float matmul on weights dequantized
once at load (int8 x per-channel scale). The file on disk stays int8; memory is the dense
model's, and so is the matmul. Where oneDNN is exact (VNNI, AMX) it declines and vLLM's
kernel serves.

This module is imported by vLLM's processes through the plugin, never by the gateway."""

import functools

import torch
from vllm import _custom_ops as ops
from vllm.model_executor.kernels.linear.scaled_mm.cpu import CPUInt8ScaledMMLinearKernel
from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import (
    Int8ScaledMMLinearLayerConfig,
)
from vllm.model_executor.layers.quantization.utils import replace_parameter
from vllm.model_executor.layers.quantization.utils.w8a8_utils import convert_to_channelwise


@functools.cache
def onednn_int8_saturates() -> bool:
    """Whether vLLM's oneDNN int8 GEMM gets 127 x 127 x 64 wrong here: every byte pair's
    sum (255 x 127 x 2 once oneDNN shifts s8 activations to u8) overflows 16 bits."""
    k, n = 64, 16
    # The handler reads these tensors' memory when it runs: they must outlive it.
    # Explicit dtypes: vLLM's worker runs this with the model's dtype as torch's default.
    f32 = torch.float32
    weight, scale = torch.full((n, k), 127, dtype=torch.int8), torch.ones(n, 1, dtype=f32)
    handler = ops.create_onednn_scaled_mm(weight.t(), scale, f32, True, False, 32)
    x_q, x_s, x_zp = ops.onednn_scaled_int8_quant(torch.ones(1, k, dtype=f32), None, None, True)
    out = torch.empty(1, n, dtype=f32)
    ops.onednn_scaled_mm(handler, x_q, out, x_s, x_zp, None, None)
    exact = 127 * 127 * k * float(x_s.flatten()[0])
    return not torch.allclose(out, torch.full_like(out, exact), rtol=1e-4)


class DequantizedInt8Kernel(CPUInt8ScaledMMLinearKernel):
    @classmethod
    def can_implement(cls, c: Int8ScaledMMLinearLayerConfig) -> tuple[bool, str | None]:
        if c.is_static_input_scheme or not c.input_symmetric:
            return False, "dynamic symmetric activations only (the job's W8A8)"
        try:
            saturates = onednn_int8_saturates()
        except Exception as e:  # a vLLM whose private ops changed: its own kernel serves
            return False, f"the int8 probe failed ({type(e).__name__}: {e})"
        if not saturates:
            return False, "oneDNN's int8 GEMM is exact on this CPU"
        return True, None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        w_q_name = self.layer_param_names[0]
        weight, scale, *_ = self._get_layer_params(layer)
        if not self.config.is_channelwise:
            scale = convert_to_channelwise(scale, layer.logical_widths)
        dense = weight.data.to(torch.float32) * scale.data.reshape(-1, 1).to(torch.float32)
        replace_parameter(
            layer,
            w_q_name,
            torch.nn.Parameter(dense.to(torch.get_default_dtype()), requires_grad=False),
        )

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        weight = getattr(layer, self.layer_param_names[0])
        shape = x.shape
        x_q, x_s, _ = ops.onednn_scaled_int8_quant(x.reshape(-1, shape[-1]), None, None, True)
        out = torch.nn.functional.linear(x_q.to(x.dtype), weight)
        out.mul_(x_s.reshape(-1, 1).to(x.dtype))
        if bias is not None:
            out.add_(bias)
        return out.reshape(*shape[:-1], out.shape[-1])
