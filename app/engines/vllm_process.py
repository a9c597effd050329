"""One vLLM OpenAI server as a child process (no torch or vLLM import in this process)."""

import contextlib
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.errors import SparsegateError

LEDGER = "app.engines.ledger.Ledger"


@dataclass
class EngineSettings:
    model: Path
    served_name: str
    port: int
    host: str = "127.0.0.1"
    max_model_len: int = 2048
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU (whole GiB)
    dtype: str = "auto"
    # On the CPU, torch.compile costs about a minute of start-up per engine; -O0 skips it.
    compile: bool = False
    attention_backend: str | None = None  # e.g. FLASH_ATTN on GPUs
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    python: str = sys.executable  # the serve environment's interpreter

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self, parent) -> dict[str, str]:
        """The engine process's environment, for `serve`'s engines and engine containers
        alike. -O0 leaves the model eager, yet vLLM still torch.compiles two sampler helpers
        (logprob ranks, random sampling) at their first calls of each batch shape: on a
        busy CPU host those inductor builds stalled a fresh engine for minutes, its requests
        timing out. With nothing compiled, they run eagerly from the start."""
        eager = {} if self.compile else {"TORCHDYNAMO_DISABLE": "1"}
        return {**eager, **engine_environment(parent, self.served_name),
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}  # fmt: skip

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", engine_dtype(self.dtype),
            # The engine's own cost ledger (app/engines/ledger.py), whoever sends to it.
            "--middleware", LEDGER,
        ]  # fmt: skip
        if not self.compile:
            cmd.append("-O0")
        if self.attention_backend:
            cmd += ["--attention-backend", self.attention_backend]
        return cmd + self.extra_args


class VllmProcess:
    def __init__(self, settings: EngineSettings, log: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        # One client for every health check: a new httpx.Client per check builds an SSL
        # context each time (loading CA certificates), ~15% of a core at one check a second.
        self._http = httpx.Client(timeout=2)

    def start(self) -> None:
        env = {**self.settings.environment(os.environ), **self.settings.env}
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        # Own session and process group: vLLM's API server forks its EngineCore, which
        # outlives a killed API server unless the whole group is signalled.
        self.proc = subprocess.Popen(
            self.settings.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        if out is not subprocess.DEVNULL:
            out.close()  # the child holds its own copy

    @property
    def pgid(self) -> int | None:
        """The engine's process group (the API server's pid), which may outlive it."""
        return self.proc.pid if self.proc is not None else None

    def healthy(self) -> bool:
        try:
            return self._http.get(f"{self.settings.url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 600, cancel: threading.Event | None = None) -> bool:
        """Wait until the engine answers its health check; False if `cancel` was set first."""
        cancel = cancel or threading.Event()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if cancel.is_set():
                return False
            if self.proc is not None and self.proc.poll() is not None:
                raise SparsegateError(
                    f"vLLM engine for {self.settings.served_name} exited with code "
                    f"{self.proc.returncode} during start-up (log: {self.log_path})"
                )
            if time.monotonic() > deadline:
                raise SparsegateError(
                    f"vLLM engine for {self.settings.served_name} not ready in {timeout:.0f} s "
                    f"(log: {self.log_path})"
                )
            cancel.wait(0.5)
        return True

    def terminate(self) -> None:
        """Ask the whole group to stop (SIGTERM): the API server shuts its EngineCore down."""
        _signal_group(self.pgid, signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        """Wait for the API server until `deadline` (monotonic), then SIGKILL whatever is left
        of the group: a crashed server's EngineCore, or a server that would not stop."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        _signal_group(self.pgid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float = 10) -> None:
        self.terminate()
        self.reap(time.monotonic() + grace)


def engine_dtype(requested: str, flags: set[str] | None = None) -> str:
    """The dtype a CPU engine computes in. `auto` takes the checkpoint's bf16, which x86 CPUs
    without AVX512_BF16 or AMX-BF16 compute slowly: with vLLM's AVX2 kernels (emulated on an
    AMX host; README "bf16 on CPUs without native bf16"), scoring 4 prompts of ~580 tokens
    took 120 s in bf16 and 43 s in float32; there `auto` means float32. A dtype the operator
    names wins, and GPU builds of vLLM keep their own choice."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    if requested != "auto" or not x86 or not _vllm_cpu_build():
        return requested
    flags = _cpu_flags() if flags is None else flags
    return requested if {"avx512_bf16", "amx_bf16"} & flags else "float32"


def _vllm_cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    return set()


def shared_host_environment(engines: int, parent=os.environ) -> dict[str, str]:
    """For one of several engines on this host. vLLM's CPU worker binds its OpenMP threads
    as if it had the host alone, keeping a core for its scheduler: on 2 cores every engine's
    worker went to CPU 0. Four tiny engines under load then answered in up to 29 s (p99 up
    to 10 s); unbound, with one thread each, in up to 8 s, and none starved. The operator's
    own binding wins."""
    if engines < 2 or "VLLM_CPU_OMP_THREADS_BIND" in parent:
        return {}
    threads = max(1, (os.cpu_count() or 1) // engines)
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}


def engine_environment(parent, variant: str) -> dict[str, str]:
    """The engine's environment: the parent's, less the gateway workers' metrics folder (an
    engine writing its metrics there would mix them into the gateway's /metrics, and vLLM
    would read the gateway's files), plus the variant its ledger books under.

    vLLM 0.32 on the CPU saves an AOT-compiled model it then fails to load ("'function'
    object has no attribute 'finalize_loading'"), so each start compiled again: a compiled
    Gemma 3 270M engine took 52-53 s to come back. Its older compile cache loads, and the
    same engine comes back in 32 s, decoding as fast.

    On AMX CPUs vLLM serves a W4A16 checkpoint as W4A8 by default (int8 activations,
    `VLLM_CPU_INT4_W4A8`): another model than the one the job evaluated. SmolLM2-135M's
    W4A16 variant read 3.2% worse bits per byte that way, and matched the job within 0.1%
    with 16-bit activations. A value the operator set wins."""
    env = {k: v for k, v in parent.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    served_as_evaluated = {"VLLM_CPU_INT4_W4A8": "0"}
    return {"VLLM_USE_AOT_COMPILE": "0", **served_as_evaluated, **env,
            "SPARSEGATE_VARIANT": variant}  # fmt: skip


def stop_all(engines: list[VllmProcess], grace: float = 10) -> None:
    """Stop several engines at once: one deadline for all, not `grace` each."""
    for engine in engines:
        engine.terminate()
    deadline = time.monotonic() + grace
    for engine in engines:
        engine.reap(deadline)


def _signal_group(pgid: int | None, sig: int) -> None:
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError):  # no process of the group is left
        os.killpg(pgid, sig)
