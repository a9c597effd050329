"""Hand a command to the environment that can run it.

The `serve` and `compress` environments cannot be merged (their compressed-tensors pins
conflict), yet users should type one `sparsegate`. A command that needs the other
environment's libraries re-executes itself there with the same arguments.
"""

import os
import sys
from importlib.util import find_spec
from pathlib import Path

from app.config import Settings
from app.errors import SparsegateError

NEEDS = {"compress": ("torch", "transformers", "gguf", "accelerate")}


def run_in(role: str) -> None:
    """Return if this interpreter can run `role`'s jobs, else exec the one that can."""
    if all(find_spec(module) for module in NEEDS[role]):
        return
    venvs = Settings().venvs or Path(sys.prefix).parent
    python = venvs / role / "bin" / "python"
    if not python.exists():
        raise SparsegateError(
            f"this command runs in the {role} environment, not found at {venvs / role}: "
            "run `make setup` (or set SPARSEGATE_VENVS)"
        )
    os.execv(python, [str(python), "-m", "app.cli.main", *sys.argv[1:]])
