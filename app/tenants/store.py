"""Tenant keys in the registry's database (SQLite or PostgreSQL, whichever the registry
uses): create, rotate, revoke, each with an audit row in the same transaction."""

import getpass
import json
import socket

from app.errors import SparsegateError
from app.registry import Registry
from app.registry.names import validate_name
from app.registry.store import now
from app.tenants.keys import digest, new_key
from app.tenants.records import TenantKey

COLUMNS = "name, digest, models, expires_at, revoked_at, created_at, updated_at"


def actor() -> str:
    """Who made a change, for the audit: the operating-system user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


class KeyStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def listed(self) -> list[TenantKey]:
        rows = self.registry.query(f"SELECT {COLUMNS} FROM api_keys ORDER BY name")
        return [TenantKey.from_row(r) for r in rows]

    def get(self, name: str) -> TenantKey:
        rows = self.registry.query(f"SELECT {COLUMNS} FROM api_keys WHERE name = ?", (name,))
        if not rows:
            raise SparsegateError(f"no API key named {name!r} (sparsegate keys list)")
        return TenantKey.from_row(rows[0])

    def audit(self, name: str | None = None) -> list[dict]:
        where, params = ("WHERE name = ?", (name,)) if name else ("", ())
        rows = self.registry.query(
            f"SELECT at, actor, action, name, detail FROM key_audit {where} ORDER BY at", params
        )
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]

    def create(self, name: str, models: list[str], expires_at: str | None) -> str:
        """The new key (shown once by the caller); only its digest is stored."""
        validate_name(name)
        key, stamp = new_key(), now()
        with self.registry.transaction() as tx:
            if tx.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)):
                raise SparsegateError(
                    f"an API key named {name!r} exists (keys rotate gives it a new key)"
                )
            tx.execute(
                f"INSERT INTO api_keys ({COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, ?)",
                (name, digest(key), json.dumps(models), expires_at, stamp, stamp),
            )
            self._audit(tx, "created", name, {"models": models, "expires_at": expires_at})
        return key

    def rotate(self, name: str) -> str:
        """A new key for `name`; the old one stops working at once."""
        key = new_key()
        with self.registry.transaction() as tx:
            self._live(tx, name)
            tx.execute(
                "UPDATE api_keys SET digest = ?, updated_at = ? WHERE name = ?",
                (digest(key), now(), name),
            )
            self._audit(tx, "rotated", name, {})
        return key

    def revoke(self, name: str) -> None:
        with self.registry.transaction() as tx:
            self._live(tx, name)
            stamp = now()
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?, updated_at = ? WHERE name = ?",
                (stamp, stamp, name),
            )
            self._audit(tx, "revoked", name, {})

    def _live(self, tx, name: str) -> None:
        rows = tx.execute("SELECT revoked_at FROM api_keys WHERE name = ?", (name,))
        if not rows:
            raise SparsegateError(f"no API key named {name!r} (sparsegate keys list)")
        if rows[0]["revoked_at"]:
            raise SparsegateError(f"API key {name!r} was revoked at {rows[0]['revoked_at']}")

    @staticmethod
    def _audit(tx, action: str, name: str, detail: dict) -> None:
        tx.execute(
            "INSERT INTO key_audit (at, actor, action, name, detail) VALUES (?, ?, ?, ?, ?)",
            (now(), actor(), action, name, json.dumps(detail)),
        )
