"""Compression methods, one module each, behind one small interface.

A method is a class with a name and a stage (trim, prune, recover, quant): `check()`
refuses arguments it cannot honour before any work (in the CLI's environment too, so no
torch at import), `prepare(job)` refuses what needs the loaded model, `apply(job, ...)`
does its work on `job.model` and returns what it writes into the report. As in
llm-compressor's `modifiers/`, the class is thin; the tensor work lives in plain functions
(`app/job/pruning.py`, `structured.py`, `trim_vocab.py`, `recover.py`, `distill.py`) or in
llm-compressor itself.

The job discovers every module of this package, and of the folders listed in
`SPARSEGATE_METHODS` (colon-separated): adding a method is one file (README, "Adding a
method"). The CLI's choices, the recipe's validation and `bench quality` read the result.
"""

import importlib
import importlib.util
import os
import pkgutil
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from app.errors import SparsegateError

if TYPE_CHECKING:
    from app.job.recipe import Recipe


class Stage(StrEnum):
    # In pipeline order: the vocabulary is trimmed first (every later pass pays for K rows),
    # recovery follows each pruning step, quantization comes last (it must keep the zeros).
    trim = "trim"
    prune = "prune"
    recover = "recover"
    quant = "quant"


@dataclass
class Job:
    """What methods act on: the model being compressed and what the job knows about it."""

    recipe: "Recipe"
    model: Any
    tokenizer: Any
    steps: Any  # app.job.progress.Steps
    registry: Any
    parent: Any  # the parent's registry record
    calib: list[list[int]] = field(default_factory=list)
    calib_text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what prepare() keeps for apply()


# A parent with at least this share of zeros in its linear layers was pruned: its zeros
# are its mask (a dense model has almost no exact zeros).
PRUNED_PARENT = 0.05


def holds_zeros(job: Job, target: float) -> bool:
    """Whether recovery must hold the zeros: pruned in this job (unstructured) or before it,
    in the parent (`compress <pruned variant> --recover ...` must not fill them back in)."""
    pruned_here = target > 0 and not job.recipe.structured
    return pruned_here or (job.parent.sparsity or 0.0) >= PRUNED_PARENT


class Method:
    name: ClassVar[str]
    stage: ClassVar[Stage]
    summary: ClassVar[str]  # one line for --help
    # Pruning methods: the shapes they can prune to (unstructured, n:m, channels).
    patterns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, recipe: "Recipe") -> None:
        self.recipe = recipe

    def check(self) -> None:
        """Refuse arguments this method cannot honour (no model loaded yet)."""

    def prepare(self, job: Job) -> None:
        """Refuse what needs the loaded model, before any work is done."""

    def apply(self, job: Job, target: float | None = None) -> dict[str, Any] | None:
        """Do the work on `job.model` (`target`: the sparsity of this pruning step)."""
        raise NotImplementedError


_FOUND: dict[tuple[Stage, str], type[Method]] | None = None


def _modules() -> list[Any]:
    mods = [
        importlib.import_module(f"{__name__}.{m.name}")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
    ]
    for folder in filter(None, os.environ.get("SPARSEGATE_METHODS", "").split(":")):
        for path in sorted(Path(folder).glob("*.py")):
            spec = importlib.util.spec_from_file_location(f"sparsegate_method_{path.stem}", path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            mods.append(module)
    return mods


def methods() -> dict[tuple[Stage, str], type[Method]]:
    """Every method, by (stage, name)."""
    global _FOUND
    if _FOUND is None:
        found: dict[tuple[Stage, str], type[Method]] = {}
        for module in _modules():
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, Method)
                    and obj is not Method
                    and "name" in vars(obj)
                ):
                    key = (obj.stage, obj.name)
                    if key in found and found[key] is not obj:
                        raise SparsegateError(f"two {obj.stage} methods are named {obj.name!r}")
                    found[key] = obj
        _FOUND = found
    return _FOUND


def names(stage: Stage) -> list[str]:
    return sorted(name for s, name in methods() if s is stage)


def get(stage: Stage, name: str) -> type[Method]:
    try:
        return methods()[(stage, name)]
    except KeyError:
        option = {Stage.trim: "--trim-vocab"}.get(stage, f"--{stage.value}")
        raise SparsegateError(
            f"unknown {option} {name!r}: use one of none, {', '.join(names(stage))}"
        ) from None


def choices(stage: Stage) -> str:
    """For --help: `none; name (summary); ...`."""
    return "; ".join(["none", *(f"{n}: {get(stage, n).summary}" for n in names(stage))])
