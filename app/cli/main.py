"""`sparsegate`: entry point. Errors meant for the user print as one line, exit code 2."""

import signal
import sys

import typer
from rich.console import Console

from app.cli.bench import bench_app
from app.cli.compress import compress
from app.cli.demo import demo
from app.cli.deploy import deploy_app
from app.cli.keys import keys_app
from app.cli.models import models_app
from app.cli.rollout import rollout_app
from app.cli.serve import engine, serve
from app.errors import SparsegateError

app = typer.Typer(
    name="sparsegate",
    help="Compress language models, register the variants, serve and compare them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
app.command()(compress)
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.add_typer(rollout_app, name="rollout")
app.command()(serve)
app.command()(engine)
app.command()(demo)
app.add_typer(deploy_app, name="deploy")


def _terminate(signum: int, frame: object) -> None:
    # Turn SIGTERM (docker stop, kill) into the same clean unwinding as Ctrl-C, so drafts
    # are deleted and nothing half-written is left in the registry.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    err = Console(stderr=True)
    try:
        app()
    except SparsegateError as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
