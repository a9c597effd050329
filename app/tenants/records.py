"""One tenant's key as stored: its SHA-256 digest (never the key), what it may use, its
limits and budget, its state."""

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

LIMITS = ("rpm", "tpm", "max_inflight", "budget_dollars", "budget_period_s")


@dataclass(frozen=True)
class Limits:
    """None: no such limit. A budget without a period holds for the key's whole life."""

    rpm: int | None = None  # requests in any 60 s
    tpm: int | None = None  # tokens (prompt + completion) in any 60 s
    max_inflight: int | None = None  # requests at once, over every gateway process
    budget_dollars: float | None = None
    budget_period_s: int | None = None

    @classmethod
    def from_row(cls, row: dict) -> "Limits":
        return cls(**{k: row.get(k) for k in LIMITS})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def counted(self) -> bool:
        """Whether any limit needs the shared counters."""
        return bool(self.rpm or self.tpm or self.max_inflight)


@dataclass(frozen=True)
class TenantKey:
    name: str
    digest: str
    models: tuple[str, ...]  # empty: every model
    expires_at: str | None  # ISO 8601, UTC
    revoked_at: str | None
    created_at: str
    updated_at: str
    limits: Limits = Limits()

    @classmethod
    def from_row(cls, row: Any) -> "TenantKey":
        data = dict(row)
        limits = Limits.from_row(data)
        for k in LIMITS:
            data.pop(k, None)
        data["models"] = tuple(json.loads(data["models"]))
        return cls(**data, limits=limits)

    def refusal(self, at: datetime | None = None) -> str | None:
        """Why the key cannot be used now (revoked, expired), or None."""
        if self.revoked_at:
            return f"API key {self.name!r} was revoked"
        if self.expires_at and datetime.fromisoformat(self.expires_at) <= (at or _now()):
            return f"API key {self.name!r} expired at {self.expires_at}"
        return None

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def budget_since(self, at: datetime | None = None) -> datetime:
        """Where the budget's current period began: periods follow one another from the
        key's creation (the whole life without a period)."""
        start = datetime.fromisoformat(self.created_at)
        period = self.limits.budget_period_s
        if not period:
            return start
        elapsed = ((at or _now()) - start).total_seconds()
        return start + timedelta(seconds=period * (elapsed // period))

    @property
    def state(self) -> str:
        return "revoked" if self.revoked_at else ("expired" if self.refusal() else "active")


def _now() -> datetime:
    return datetime.now(UTC)
