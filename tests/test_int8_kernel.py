"""The plugin's W8A8 kernel (app/engines/vllm_int8.py) on a oneDNN capped below VNNI, as on
AVX2-only CPUs: the probe sees the saturation, and the kernel computes what exact integer
arithmetic gives, where vLLM's own kernel does not. oneDNN reads its cap once per process,
so each check runs in a fresh interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layer_outputs() -> dict[str, float]:
    """Run in the child: one 576 x 1536 layer with outlier activations through both kernels;
    each one's largest error relative to the largest exact output."""
    import torch
    from vllm.model_executor.kernels.linear.scaled_mm.cpu import CPUInt8ScaledMMLinearKernel
    from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import (
        Int8ScaledMMLinearLayerConfig,
    )

    from app.engines.vllm_int8 import DequantizedInt8Kernel, onednn_int8_saturates

    torch.manual_seed(0)
    n, k = 1536, 576
    dense = torch.randn(n, k) * 0.05
    scale = dense.abs().amax(dim=1, keepdim=True) / 127
    q = torch.round(dense / scale).clamp(-127, 127).to(torch.int8)
    x = torch.randn(32, k)
    x[:, :4] *= 20  # a few large channels, as in a transformer's activations
    x_scale = x.abs().amax(dim=1, keepdim=True) / 127
    x_q = torch.round(x / x_scale).clamp(-127, 127)
    exact = (x_q.double() @ q.double().t()) * x_scale.double() * scale.double().t()
    config = Int8ScaledMMLinearLayerConfig(
        is_static_input_scheme=False, is_channelwise=True, input_symmetric=True
    )
    names = ["weight", "weight_scale", "input_scale", "input_zero_point", "azp_adj"]
    errors = {"saturates": float(onednn_int8_saturates())}
    for kernel_type in (DequantizedInt8Kernel, CPUInt8ScaledMMLinearKernel):
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(q.clone(), requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(scale.clone(), requires_grad=False)
        layer.logical_widths = [n]
        layer.input_scale = layer.input_zero_point = layer.azp_adj = None  # dynamic, symmetric
        kernel = kernel_type(config, names)
        kernel.process_weights_after_loading(layer)
        out = kernel.apply_weights(layer, x).double()
        errors[kernel_type.__name__] = float((out - exact).abs().max() / exact.abs().max())
    return errors


def _in_child(cap: str) -> dict[str, float]:
    code = "import json; from tests.test_int8_kernel import _layer_outputs as f; "
    code += "print(json.dumps(f()))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_w8a8_is_exact_where_onednn_saturates():
    errors = _in_child("AVX2")
    assert errors["saturates"] == 1.0
    assert errors["DequantizedInt8Kernel"] < 1e-5
    # Why the kernel exists: vLLM's own oneDNN path, at the same cap, loses products.
    assert errors["CPUInt8ScaledMMLinearKernel"] > 1e-2
