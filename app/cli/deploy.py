"""`sparsegate deploy ...`: build the main job's variants from their one definition, and
render the deploy files that depend on it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli.models import RegistryOpt, _home, _open, console, link_to
from app.deploy import main_job
from app.errors import SparsegateError
from app.registry import open_registry

deploy_app = typer.Typer(help="The main job's variants: build them, render the deploy files.")

DefinitionArg = Annotated[Path, typer.Argument(help="The variants' definition")]


@deploy_app.command()
def build(
    definition: DefinitionArg = main_job.DEFINITION,
    link: Annotated[
        Path | None, typer.Option(help="Also link each served variant at LINK/NAME")
    ] = None,
    calibration_samples: Annotated[
        int | None, typer.Option(min=1, help="Per compress job [default: the job's]")
    ] = None,
    registry: RegistryOpt = None,
) -> None:
    """Import the base and compress every variant the registry lacks, parents first."""
    job = main_job.load(definition)
    build_variants(job, _home(registry), calibration_samples)
    if link is not None:
        reg = _open(registry)
        for name in job.serve:
            link_to(link / name, reg.servable_path(name).resolve())
    console.print(f"[green]ready[/]: {', '.join(job.serve)}")


@deploy_app.command()
def render(
    definition: DefinitionArg = main_job.DEFINITION,
    check: Annotated[
        bool, typer.Option(help="Write nothing; exit 1 if a file differs from its rendering")
    ] = False,
) -> None:
    """Rewrite compose's engines and bench, Kubernetes' engines and both gateway files'
    variants and aliases from the definition (run from the repository's root)."""
    from app.deploy.render import rendered_files

    job = main_job.load(definition)
    files = rendered_files(job, Path.cwd(), definition.read_text())
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    for path in stale:
        console.print(f"{'differs' if check else 'rendered'}: {path.relative_to(Path.cwd())}")
        if not check:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(files[path])
            tmp.replace(path)  # a reader sees the old file or the new one
    if check and stale:
        raise typer.Exit(1)
    if not stale:
        console.print("every rendered file is current")


def build_variants(job: main_job.MainJob, home: Path, calibration_samples: int | None) -> None:
    """`models import` the base if missing, then `compress` each missing variant."""
    exe, reg_args = sparsegate_command(), ["--registry", str(home)]
    registered = {v.name for v in open_registry(home, create=True).variants()}
    if job.base not in registered:
        run([*exe, "models", "import", job.base, "--exist-ok", *reg_args])
    extra = ["--calibration-samples", str(calibration_samples)] if calibration_samples else []
    for name, args in main_job.missing_builds(job, registered):
        console.rule(f"{name}: compress {' '.join(args[:-2])}")
        run([*exe, "compress", *args, *extra, *reg_args])
    for name in [n for n in job.build if n in registered]:
        console.print(f"{name} is registered already")


def sparsegate_command() -> list[str]:
    found = shutil.which("sparsegate", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "app.cli.main"]


def run(cmd: list[str]) -> None:
    code = subprocess.call(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if code != 0:
        raise SparsegateError(f"`sparsegate {' '.join(cmd[1:4])} ...` failed (exit {code})")
