"""A vLLM general plugin (entry point `vllm.general_plugins`), loaded by vLLM into each of its
processes (API server, EngineCore, model workers) in the serve environment.

It chooses the CPU attention kernel. vLLM 0.32 picks its AMX kernel wherever the CPU reports
AMX and the model is bf16; on some hosts that report AMX (seen on this project's CI machines,
virtual machines whose oneDNN AMX matmuls run fine) that kernel dies with SIGILL on the first
request, taking the engine down. By default the plugin maps that choice to vLLM's AVX-512
`vec` kernel, which takes the same cache layout (block sizes in multiples of 32); the linear
layers, where most of the time goes, keep oneDNN's AMX. `SPARSEGATE_CPU_ATTENTION=auto`
leaves vLLM's own choice on hosts where its AMX attention works.

It also gives W4A16 layers a kernel on CPUs without AVX-512 (app/engines/vllm_wna16.py), and
W8A8 layers one on CPUs where oneDNN's int8 GEMM saturates (app/engines/vllm_int8.py).

This module is imported by vLLM, never by the gateway."""

import logging
import os

log = logging.getLogger("sparsegate.vllm_plugin")


def register() -> None:
    # vLLM loads this into every one of its processes: whatever goes wrong here (a vLLM that
    # renamed the private function, a build without the CPU backend) must leave vLLM's own
    # choice in place, never take the process down.
    if os.environ.get("SPARSEGATE_CPU_ATTENTION", "vec") != "auto":
        try:
            _map_amx_to_vec()
        except Exception as e:  # any failure: vLLM's choice and one warning
            log.warning("sparsegate: CPU attention left to vLLM (%s: %s)", type(e).__name__, e)
    try:
        _add_cpu_kernels()
    except Exception as e:
        log.warning("sparsegate: quantized kernels left to vLLM (%s: %s)", type(e).__name__, e)


def _add_cpu_kernels() -> None:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return
    if current_platform.is_cpu():
        from vllm.model_executor.kernels.linear import _POSSIBLE_INT8_KERNELS, _POSSIBLE_KERNELS

        from app.engines.vllm_int8 import DequantizedInt8Kernel
        from app.engines.vllm_wna16 import DequantizedWNA16Kernel

        _put_first(_POSSIBLE_KERNELS, DequantizedWNA16Kernel)
        _put_first(_POSSIBLE_INT8_KERNELS, DequantizedInt8Kernel)


def _put_first(table: dict, kernel: type) -> None:
    """Ahead of vLLM's own CPU kernels in its choice `table`: the kernel declines wherever
    vLLM's serve as evaluated. Once, though vLLM may load plugins more than once."""
    from vllm.platforms import PlatformEnum

    kernels = table.setdefault(PlatformEnum.CPU, [])
    if not any(k.__name__ == kernel.__name__ for k in kernels):
        kernels.insert(0, kernel)


def _map_amx_to_vec() -> None:
    try:
        from vllm.v1.attention.backends import cpu_attn
    except ImportError:  # a vLLM build without the CPU backend (GPU)
        return
    chosen_by_vllm = cpu_attn._get_attn_isa
    if getattr(chosen_by_vllm, "sparsegate", False):
        return  # vLLM may load plugins more than once per process
    if not callable(chosen_by_vllm):
        raise TypeError("vllm.v1.attention.backends.cpu_attn._get_attn_isa is not callable")

    def attention_isa(*args, **kwargs) -> str:
        isa = chosen_by_vllm(*args, **kwargs)
        return "vec" if isa == "amx" else isa

    attention_isa.sparsegate = True
    cpu_attn._get_attn_isa = attention_isa
