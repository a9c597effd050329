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
