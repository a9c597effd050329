"""`sparsegate models ...`: the registry from the command line."""

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli.envs import run_in
from app.config import Settings
from app.errors import Interrupted
from app.registry import Registry, Stage, Variant, open_registry

models_app = typer.Typer(help="The model registry: list, show, import, promote, retire, remove.")
# Tables stay readable in logs and pipes, where rich would otherwise assume 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)

RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="Registry folder [default: $SPARSEGATE_HOME or ./models]"),
]
NameArg = Annotated[str, typer.Argument(help="Variant name")]


def _home(registry: Path | None) -> Path:
    return registry or Settings().home


def _open(registry: Path | None) -> Registry:
    return open_registry(_home(registry))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _quality(v: Variant) -> str:
    if bpb := v.quality.get("bpb_ratio"):
        return "bits/byte " + " ".join(f"{t} ×{r:.3f}" for t, r in bpb.items())
    if (ratio := v.quality.get("ppl_ratio")) is not None:
        return f"ppl ×{ratio:.3f}"
    if fid := v.quality.get("fidelity"):
        return f"logit err {fid['relative_logit_error']:.2%}"
    return "-"


@models_app.command("list")
def list_(
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """List every variant."""
    reg = _open(registry)
    variants = reg.variants()
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in variants], indent=2))
        return
    table = Table(title=f"Registry {reg.describe()}")
    for col in ("name", "stage", "base", "parent", "params", "on disk", "sparsity", "vocab",
                "quality"):  # fmt: skip
        table.add_column(
            col, justify="right" if col in ("params", "on disk", "sparsity", "vocab") else "left"
        )
    table.add_column("created")
    for v in variants:
        table.add_row(
            v.name,
            v.stage.value,
            v.base,
            v.parent or "-",
            f"{v.param_count / 1e6:.1f} M",
            _size(v.bytes_on_disk),
            f"{v.sparsity:.1%}",
            f"{v.quality['vocab']['rows_kept']:,}" if v.quality.get("vocab") else "full",
            _quality(v),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@models_app.command()
def show(name: NameArg, registry: RegistryOpt = None) -> None:
    """Show one variant's full record (JSON), and any of its files the store lacks."""
    reg = _open(registry)
    record = reg.get(name).model_dump(mode="json")
    if missing := reg.missing_files(name):
        record["missing_files"] = missing
        typer.echo(
            f"{name}: {len(missing)} of its files are missing from {reg.describe()}: "
            f"{', '.join(missing[:5])}",
            err=True,
        )
    typer.echo(json.dumps(record, indent=2))


@models_app.command()
def path(
    name: NameArg,
    registry: RegistryOpt = None,
    link: Annotated[
        Path | None,
        typer.Option(help="Also point this symlink at it (a fixed path for an engine's args)"),
    ] = None,
) -> None:
    """Print a folder an engine can load (fetched from the shared store into the local cache
    and verified; sparse-at-rest weights expanded, bit-exact)."""
    folder = _open(registry).servable_path(name).resolve()
    if link is not None:
        link_to(link, folder)
    typer.echo(folder)


def link_to(link: Path, folder: Path) -> None:
    """Point the symlink `link` at `folder`, atomically: a reader sees the old or the new."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder)
    tmp.replace(link)


@models_app.command()
def promote(
    name: NameArg,
    registry: RegistryOpt = None,
    force: Annotated[bool, typer.Option(help="Promote even if over the quality gate")] = False,
) -> None:
    """Make a variant its base's production variant (the previous one becomes a candidate)."""
    demoted = _open(registry).set_stage(
        name, Stage.production, force=force, quality_gate=Settings().quality_gate
    )
    console.print(
        f"{name} is now in production" + (f"; demoted {', '.join(demoted)}" if demoted else "")
    )


@models_app.command()
def retire(name: NameArg, registry: RegistryOpt = None) -> None:
    """Retire a variant (kept on disk, no longer served)."""
    _open(registry).set_stage(name, Stage.retired)
    console.print(f"{name} is retired")


@models_app.command()
def remove(
    name: NameArg,
    registry: RegistryOpt = None,
    force: Annotated[bool, typer.Option(help="Remove even a production variant")] = False,
) -> None:
    """Delete a variant's record and files."""
    _open(registry).remove(name, force=force)
    console.print(f"{name} removed")


@models_app.command()
def migrate(
    from_home: Annotated[
        Path, typer.Option("--from", help="An embedded registry folder to copy from")
    ],
    registry: RegistryOpt = None,
) -> None:
    """Copy every variant of an embedded registry into the configured one (e.g. the shared
    back end named by SPARSEGATE_REGISTRY_URL and SPARSEGATE_ARTIFACTS). Safe to re-run."""
    from app.registry.embedded import EmbeddedRegistry

    target = open_registry(_home(registry), create=True)
    copied, notes = target.copy_from(
        EmbeddedRegistry(from_home), quality_gate=Settings().quality_gate
    )
    console.print(
        f"copied {len(copied)} variant(s) into {target.describe()}"
        + (f": {', '.join(copied)}" if copied else " (all were there)")
    )
    for note in notes:
        console.print(note)


@models_app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help="'gemma-3-270m' (packaged), a local model folder, or a hub id")
    ],
    name: Annotated[str | None, typer.Option(help="Variant name [default: from source]")] = None,
    registry: RegistryOpt = None,
    exist_ok: Annotated[bool, typer.Option(help="Succeed if the name is registered")] = False,
    max_rel_error: Annotated[
        float, typer.Option(help="Fail above this relative logit error (converted vs source)")
    ] = 0.03,
    windows: Annotated[int, typer.Option(min=1, help="Held-out windows for the check")] = 4,
) -> None:
    """Import a base model as an ordinary bf16 checkpoint, check it, register it."""
    run_in("compress")
    from app.job.importer import import_model

    try:
        variant = import_model(
            source,
            _home(registry),
            name=name,
            exist_ok=exist_ok,
            max_rel_error=max_rel_error,
            windows=windows,
            console=console,
        )
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was registered") from None
    fid = variant.quality.get("fidelity", {})
    console.print(
        f"[green]registered[/] {variant.name}: {variant.param_count / 1e6:.1f} M parameters, "
        f"{_size(variant.bytes_on_disk)} on disk; conversion check: relative logit error "
        f"{fid.get('relative_logit_error', float('nan')):.4%}, top-1 agreement "
        f"{fid.get('top1_agreement', float('nan')):.1%} over {fid.get('tokens', 0)} tokens",
        highlight=False,
    )
