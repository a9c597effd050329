import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests run in the serve environment; the CLI hands compress jobs to its sibling.
SPARSEGATE = Path(sys.prefix) / "bin" / "sparsegate"
VENVS = Path(os.environ.get("SPARSEGATE_VENVS", Path(sys.prefix).parent))


def run_cli(*args: str, registry: Path | None = None, timeout: float = 900, **env: str):
    """Run the real `sparsegate` command; returns the CompletedProcess (text)."""
    cmd = [str(SPARSEGATE), *args]
    if registry is not None:
        cmd += ["--registry", str(registry)]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SPARSEGATE_VENVS": str(VENVS), "HF_HUB_OFFLINE": "1", **env},
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def default_registry(tmp_path_factory) -> Path:
    """A registry holding the real default model, imported once for the whole session."""
    home = tmp_path_factory.mktemp("default-registry")
    proc = run_cli("models", "import", "gemma-3-270m", registry=home)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return home


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Start vLLM engines in parallel: engines({name: folder}). Shared by a module's tests
    and stopped after it: a 2-core, 24 GiB machine holds one module's engines, not all."""
    from app.engines.vllm_process import EngineSettings, VllmProcess

    started: list[VllmProcess] = []
    logs = tmp_path_factory.mktemp("engine-logs")

    def start(models: dict[str, Path]) -> dict[str, str]:
        batch = [
            VllmProcess(
                EngineSettings(
                    model=folder, served_name=name, port=free_port(), max_model_len=1024
                ),
                log=logs / f"{name}.log",
            )
            for name, folder in models.items()
        ]
        for engine in batch:
            engine.start()
            started.append(engine)
        for engine in batch:
            try:
                engine.wait_ready(timeout=600)
            except Exception:
                print(engine.log_path.read_text()[-5000:])
                raise
        return {e.settings.served_name: e.settings.url for e in batch}

    yield start
    for engine in started:
        engine.stop()
