"""Tenant keys in the registry's database (SQLite or PostgreSQL, whichever the registry
uses): create, rotate, revoke, each with an audit row in the same transaction."""

import json

from app.errors import SparsegateError
from app.registry import Registry
from app.registry.names import validate_name
from app.registry.store import actor, now
from app.tenants.keys import digest, new_key
from app.tenants.records import LIMITS, Limits, TenantKey

COLUMNS = "name, digest, models, expires_at, revoked_at, created_at, updated_at"
_SELECT = (
    f"SELECT {', '.join('k.' + c for c in COLUMNS.split(', '))}, "
    f"{', '.join('l.' + c for c in LIMITS)} FROM api_keys k LEFT JOIN key_limits l USING (name)"
)


class KeyStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def listed(self) -> list[TenantKey]:
        rows = self.registry.query(f"{_SELECT} ORDER BY k.name")
        return [TenantKey.from_row(r) for r in rows]

    def get(self, name: str) -> TenantKey:
        rows = self.registry.query(f"{_SELECT} WHERE k.name = ?", (name,))
        if not rows:
            raise SparsegateError(f"no API key named {name!r} (sparsegate keys list)")
        return TenantKey.from_row(rows[0])

    def audit(self, name: str | None = None) -> list[dict]:
        where, params = ("WHERE name = ?", (name,)) if name else ("", ())
        rows = self.registry.query(
            f"SELECT at, actor, action, name, detail FROM key_audit {where} ORDER BY at", params
        )
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]

    def create(
        self, name: str, models: list[str], expires_at: str | None, limits: Limits | None = None
    ) -> str:
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
            limits = limits or Limits()
            self._put_limits(tx, name, limits)
            detail = {"models": models, "expires_at": expires_at, "limits": limits.as_dict()}
            self._audit(tx, "created", name, detail)
        return key

    def set_limits(self, name: str, changes: dict) -> Limits:
        """Change some of a key's limits (a None value removes that limit); audited with
        what they were and what they are."""
        with self.registry.transaction() as tx:
            self._live(tx, name)
            rows = tx.execute(f"SELECT {', '.join(LIMITS)} FROM key_limits WHERE name = ?",
                              (name,))  # fmt: skip
            before = Limits.from_row(dict(rows[0])) if rows else Limits()
            after = Limits(**before.as_dict() | changes)
            tx.execute("DELETE FROM key_limits WHERE name = ?", (name,))
            self._put_limits(tx, name, after)
            tx.execute("UPDATE api_keys SET updated_at = ? WHERE name = ?", (now(), name))
            self._audit(tx, "limits changed", name,
                        {"before": before.as_dict(), "after": after.as_dict()})  # fmt: skip
        return after

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
    def _put_limits(tx, name: str, limits: Limits) -> None:
        values = [getattr(limits, k) for k in LIMITS]
        tx.execute(f"INSERT INTO key_limits (name, {', '.join(LIMITS)}) VALUES (?{', ?' * 5})",
                   (name, *values))  # fmt: skip

    @staticmethod
    def _audit(tx, action: str, name: str, detail: dict) -> None:
        tx.execute(
            "INSERT INTO key_audit (at, actor, action, name, detail) VALUES (?, ?, ?, ?, ?)",
            (now(), actor(), action, name, json.dumps(detail)),
        )
