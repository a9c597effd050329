"""`sparsegate keys`: API keys for the gateway, made here and stored as SHA-256 digests."""

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from app.errors import SparsegateError
from app.gateway.keys import SCOPES, digest, new_key, render_key_file

keys_app = typer.Typer(
    help="API keys for the gateway: the key is shown once, only its digest is kept.",
    no_args_is_help=True,
)
KEY_FILE = "api_keys_sha256"


@keys_app.command("new")
def new(
    scope: Annotated[str, typer.Option(help="api (all routes) or metrics (/metrics)")] = "api",
    who: Annotated[str, typer.Option(help="A note on who holds it, kept in the file")] = "",
) -> None:
    """Print a new key, and the line to add to the gateway's api_keys_file."""
    _check_scope(scope)
    key = new_key()
    typer.echo(f"key (shown once, stored nowhere): {key}")
    typer.echo(f"api_keys_file line: {digest(key)} {scope}  # {who or 'added by hand'}")


@keys_app.command("init")
def init(
    folder: Annotated[Path | None, typer.Argument(help="Where the key file goes")] = None,
    kubernetes_secret: Annotated[
        str | None, typer.Option(help="Write a Secret of this name instead (inside a pod)")
    ] = None,
    save: Annotated[
        list[str] | None,
        typer.Option(help="NAME:SCOPE: a service's key, kept in plain text as NAME.key"),
    ] = None,
) -> None:
    """Make the gateway's first keys, once: prints the user's key (shown this once, stored
    nowhere); a later run finds them and changes nothing."""
    if (folder is None) == (kubernetes_secret is None):
        raise SparsegateError("give a folder or --kubernetes-secret NAME (one of them)")
    services = [_service(s) for s in save or []]
    user = new_key()
    entries = [(digest(user), "api", "user (printed once by keys init)")]
    files: dict[str, str] = {}
    for name, scope in services:
        key = new_key()
        entries.append((digest(key), scope, name))
        files[f"{name}.key"] = key + "\n"
    files[KEY_FILE] = render_key_file(entries)
    made = _to_secret(kubernetes_secret, files) if kubernetes_secret else _to_folder(folder, files)
    where = f"Secret {kubernetes_secret}" if kubernetes_secret else str(folder / KEY_FILE)
    if not made:
        typer.echo(f"API keys already exist in {where}; nothing changed (the key was shown "
                   "once, when they were made; `sparsegate keys new` makes another)")  # fmt: skip
        return
    typer.echo(f"API keys written to {where} ({len(entries)} digests).")
    typer.echo(f"Your API key (shown this once, stored nowhere): {user}")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise SparsegateError(f"scope {scope!r}: one of {', '.join(SCOPES)}")


def _service(text: str) -> tuple[str, str]:
    name, _, scope = text.partition(":")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise SparsegateError(f"--save {text!r}: NAME:SCOPE, NAME in letters, digits, - and _")
    _check_scope(scope)
    return name, scope


def _to_secret(name: str, files: dict[str, str]) -> bool:
    from app.deploy.kubernetes import create_secret

    return create_secret(name, files)


def _to_folder(folder: Path, files: dict[str, str]) -> bool:
    """Each file written whole; the key file linked in only if none is there (the commit:
    of two runs at once, one writes its keys, the other nothing), then the service keys."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / KEY_FILE).exists():
        return False
    staged: list[Path] = []
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            staged.append(Path(tmp))
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            # Readable by the services that mount the folder (Prometheus runs as its own user).
            os.chmod(tmp, 0o644)
        try:
            os.link(staged[-1], folder / KEY_FILE)
        except FileExistsError:
            return False
        for tmp, name in zip(staged, files, strict=True):
            if name != KEY_FILE:
                os.replace(tmp, folder / name)
        return True
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
