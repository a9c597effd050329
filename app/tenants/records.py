"""One tenant's key as stored: its SHA-256 digest (never the key), what it may use, its state."""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class TenantKey:
    name: str
    digest: str
    models: tuple[str, ...]  # empty: every model
    expires_at: str | None  # ISO 8601, UTC
    revoked_at: str | None
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: Any) -> "TenantKey":
        data = dict(row)
        data["models"] = tuple(json.loads(data["models"]))
        return cls(**data)

    def refusal(self, at: datetime | None = None) -> str | None:
        """Why the key cannot be used now (revoked, expired), or None."""
        if self.revoked_at:
            return f"API key {self.name!r} was revoked"
        if self.expires_at and datetime.fromisoformat(self.expires_at) <= (at or _now()):
            return f"API key {self.name!r} expired at {self.expires_at}"
        return None

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def state(self) -> str:
        return "revoked" if self.revoked_at else ("expired" if self.refusal() else "active")


def _now() -> datetime:
    return datetime.now(UTC)
