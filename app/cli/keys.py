"""`sparsegate keys`: API keys for the gateway, made here and stored as SHA-256 digests."""

import json
import os
import tempfile
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.cli.models import RegistryOpt, _home, _open, console
from app.errors import SparsegateError
from app.registry import Registry
from app.tenants.keys import SCOPES, digest, new_key, render_key_file

keys_app = typer.Typer(
    help="API keys for the gateway: the key is shown once, only its digest is kept.",
    no_args_is_help=True,
)
KEY_FILE = "api_keys_sha256"
ModelsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated models (variants or aliases) it may use")
]
ConfigOpt = Annotated[
    list[Path] | None, typer.Option(help="Deployment file(s) whose aliases and variants count")
]


@keys_app.command("file-line")
def file_line(
    scope: Annotated[str, typer.Option(help="api (all routes) or metrics (/metrics)")] = "api",
    who: Annotated[str, typer.Option(help="A note on who holds it, kept in the file")] = "",
) -> None:
    """Print a new key, and the line to add to a gateway's api_keys_file (static keys)."""
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
        typer.echo(
            f"API keys already exist in {where}; nothing changed (the key was shown "
            "once, when they were made; `sparsegate keys file-line` makes another)"
        )
        return
    typer.echo(f"API keys written to {where} ({len(entries)} digests).")
    typer.echo(f"Your API key (shown this once, stored nowhere): {user}")


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The tenant's name (never the key)")],
    models: ModelsOpt = None,
    expires: Annotated[str | None, typer.Option(help="Date or ISO time (UTC) it ends")] = None,
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """A tenant key in the registry's database: printed once, only its digest stored; every
    gateway with `tenant_keys: true` on this registry accepts it within seconds."""
    from app.registry import open_registry
    from app.tenants.store import KeyStore

    with closing(open_registry(_home(registry), create=True)) as reg:
        key = KeyStore(reg).create(name, _models(models, reg, config or []), _expiry(expires))
    typer.echo(f"API key {name!r} created; the key (shown this once, stored nowhere): {key}")


@keys_app.command("list")
def list_keys(registry: RegistryOpt = None) -> None:
    """Every tenant key: its models, expiry and state (never the key)."""
    from app.tenants.store import KeyStore

    table = Table("name", "models", "expires", "state", "created")
    with closing(_open(registry)) as reg:
        for k in KeyStore(reg).listed():
            table.add_row(k.name, ", ".join(k.models) or "(all)", k.expires_at or "never",
                          k.state, k.created_at)  # fmt: skip
    console.print(table)


@keys_app.command("show")
def show(name: str, registry: RegistryOpt = None) -> None:
    """One tenant key and its audit trail: who changed what, when."""
    from app.tenants.store import KeyStore

    with closing(_open(registry)) as reg:
        store = KeyStore(reg)
        key, trail = store.get(name), store.audit(name)
    typer.echo(json.dumps({"name": key.name, "models": list(key.models), "expires_at":
                           key.expires_at, "state": key.state, "created_at": key.created_at,
                           "audit": trail}, indent=2))  # fmt: skip


@keys_app.command("revoke")
def revoke(name: str, registry: RegistryOpt = None) -> None:
    """End a tenant key: gateways refuse it within seconds."""
    from app.tenants.store import KeyStore

    with closing(_open(registry)) as reg:
        KeyStore(reg).revoke(name)
    typer.echo(f"API key {name!r} revoked")


@keys_app.command("rotate")
def rotate(name: str, registry: RegistryOpt = None) -> None:
    """A new key for the tenant, printed once; the old key stops working within seconds."""
    from app.tenants.store import KeyStore

    with closing(_open(registry)) as reg:
        key = KeyStore(reg).rotate(name)
    typer.echo(f"API key {name!r} rotated; the new key (shown this once, stored nowhere): {key}")


def _models(text: str | None, reg: Registry, configs: list[Path]) -> list[str]:
    """The named models, each a registry variant or a given deployment's alias or variant."""
    from app.gateway.config import load_deployment

    names = [m.strip() for m in (text or "").split(",") if m.strip()]
    known = {v.name for v in reg.variants()}
    for path in configs:
        deployment = load_deployment(path)
        known |= set(deployment.variants) | set(deployment.aliases)
    unknown = [m for m in names if m not in known]
    if unknown:
        hint = "" if configs else " (aliases count with --config DEPLOYMENT_FILE)"
        raise SparsegateError(f"--models: unknown {', '.join(map(repr, unknown))}{hint}")
    return names


def _expiry(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise SparsegateError(f"--expires {text!r}: a date (2027-01-31) or ISO time") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    if at <= datetime.now(UTC):
        raise SparsegateError(f"--expires {text!r} is in the past")
    return at.astimezone(UTC).isoformat(timespec="seconds")


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
