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
RpmOpt = Annotated[int | None, typer.Option(help="Requests in any 60 s (all gateways)")]
TpmOpt = Annotated[
    int | None, typer.Option(help="Tokens in any 60 s: prompt + max_tokens on arrival, settled")
]
InflightOpt = Annotated[int | None, typer.Option(help="Requests at once (all gateways)")]
BudgetOpt = Annotated[float | None, typer.Option(help="Dollars per period (equal-work cost model)")]
PeriodOpt = Annotated[
    str | None, typer.Option(help="The budget's period: 30d, 12h, 90m (none: the key's life)")
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
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_inflight: InflightOpt = None,
    budget: BudgetOpt = None,
    budget_period: PeriodOpt = None,
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """A tenant key in the registry's database: printed once, only its digest stored; every
    gateway with `tenant_keys: true` on this registry accepts it within seconds."""
    from app.registry import open_registry
    from app.tenants.records import Limits
    from app.tenants.store import KeyStore

    limits = Limits(**_limits(rpm, tpm, max_inflight, budget, budget_period))
    expiry = _expiry(expires)
    with closing(open_registry(_home(registry), create=True)) as reg:
        key = KeyStore(reg).create(name, _models(models, reg, config or []), expiry, limits)
    typer.echo(f"API key {name!r} created; the key (shown this once, stored nowhere): {key}")


@keys_app.command("limit")
def limit(
    name: str,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_inflight: InflightOpt = None,
    budget: BudgetOpt = None,
    budget_period: PeriodOpt = None,
    remove: Annotated[
        list[str] | None, typer.Option(help="A limit to remove: rpm, tpm, max-inflight, budget")
    ] = None,
    registry: RegistryOpt = None,
) -> None:
    """Change a key's limits or budget (audited); every gateway applies them within seconds."""
    from app.tenants.store import KeyStore

    changes = {k: v for k, v in _limits(rpm, tpm, max_inflight, budget, budget_period).items()
               if v is not None} | _removed(remove or [])  # fmt: skip
    if not changes:
        raise SparsegateError("give a limit to set (--rpm, --tpm, ...) or --remove one")
    with closing(_open(registry)) as reg:
        after = KeyStore(reg).set_limits(name, changes)
    typer.echo(f"API key {name!r} limits: {_describe(after)}")


@keys_app.command("usage")
def usage(
    name: Annotated[str | None, typer.Argument(help="One key (default: every key)")] = None,
    since: Annotated[str | None, typer.Option(help="From this date or ISO time (UTC)")] = None,
    by: Annotated[str, typer.Option(help="key, variant or day")] = "key",
    as_json: Annotated[bool, typer.Option("--json", help="JSON rows")] = False,
    registry: RegistryOpt = None,
) -> None:
    """What each key used, as the gateways saved it: requests, errors, tokens, output bytes
    and dollars (equal-work cost model; `unpriced`: requests served before a step fit)."""
    from app.tenants.usage import COUNTS, summed

    if by not in ("key", "variant", "day"):
        raise SparsegateError(f"--by {by!r}: one of key, variant, day")
    with closing(_open(registry)) as reg:
        if name is not None:
            from app.tenants.store import KeyStore

            KeyStore(reg).get(name)  # one line if there is no such key
        rows = summed(reg, name, _time(since, "--since") if since else None, by)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", *([by] if by != "key" else []), *COUNTS)
    for r in rows:
        cells = [r["name"], *([str(r[by])] if by != "key" else [])]
        cells += [f"{r[c]:.6f}" if c == "dollars" else str(r[c]) for c in COUNTS]
        table.add_row(*cells)
    console.print(table)


@keys_app.command("list")
def list_keys(registry: RegistryOpt = None) -> None:
    """Every tenant key: its models, limits, expiry and state (never the key)."""
    from app.tenants.store import KeyStore

    table = Table("name", "models", "limits", "expires", "state", "created")
    with closing(_open(registry)) as reg:
        for k in KeyStore(reg).listed():
            table.add_row(k.name, ", ".join(k.models) or "(all)", _describe(k.limits),
                          k.expires_at or "never", k.state, k.created_at)  # fmt: skip
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
                           "limits": key.limits.as_dict(), "audit": trail}, indent=2))  # fmt: skip


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


def _limits(rpm, tpm, max_inflight, budget, period) -> dict:
    """The limits given, checked: counts of at least 1, a budget of at least 0."""
    for option, value in (("--rpm", rpm), ("--tpm", tpm), ("--max-inflight", max_inflight)):
        if value is not None and value < 1:
            raise SparsegateError(f"{option} {value}: a limit is a count of at least 1")
    if budget is not None and not budget >= 0:
        raise SparsegateError(f"--budget {budget}: dollars, 0 or more")
    if period is not None and budget is None:
        raise SparsegateError("--budget-period needs --budget DOLLARS")
    return {"rpm": rpm, "tpm": tpm, "max_inflight": max_inflight, "budget_dollars": budget,
            "budget_period_s": _period(period) if period else None}  # fmt: skip


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _period(text: str) -> int:
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) < 1:
        raise SparsegateError(f"--budget-period {text!r}: a whole number and d, h, m or s (30d)")
    return int(number) * _UNITS[unit]


def _removed(names: list[str]) -> dict:
    fields = {"rpm": ["rpm"], "tpm": ["tpm"], "max-inflight": ["max_inflight"],
              "budget": ["budget_dollars", "budget_period_s"]}  # fmt: skip
    out = {}
    for name in names:
        if name not in fields:
            raise SparsegateError(f"--remove {name!r}: one of {', '.join(fields)}")
        out |= dict.fromkeys(fields[name])
    return out


def _describe(limits) -> str:
    parts = [f"{k} {getattr(limits, k)}" for k in ("rpm", "tpm", "max_inflight")
             if getattr(limits, k) is not None]  # fmt: skip
    if limits.budget_dollars is not None:
        period = limits.budget_period_s
        parts.append(f"${limits.budget_dollars:g}" + (f" per {period} s" if period else ""))
    return ", ".join(parts) or "none"


def _time(text: str, option: str) -> str:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise SparsegateError(f"{option} {text!r}: a date (2027-01-31) or ISO time") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="seconds")


def _expiry(text: str | None) -> str | None:
    if text is None:
        return None
    at = datetime.fromisoformat(_time(text, "--expires"))
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
