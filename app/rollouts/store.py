"""Rollouts in the registry's database (SQLite or PostgreSQL, whichever the registry uses):
the one source of truth that the CLI changes and every gateway reads. Each change is one
transaction with its event row (who, when, and the evidence of a decision)."""

import json
import uuid
from dataclasses import dataclass

from app.errors import SparsegateError
from app.registry import Registry
from app.registry.store import actor, now, now_precise
from app.rollouts.spec import RolloutSpec

LIVE = ("running", "paused")
COLUMNS = (
    "id, alias, candidate, candidate_entry, reference, spec, state, step, step_started_at, "
    "reason, created_at, updated_at"
)


@dataclass(frozen=True)
class Rollout:
    id: str
    alias: str
    candidate: str
    candidate_entry: str  # the candidate's registry name
    reference: str
    spec: RolloutSpec
    state: str  # running, paused, promoted, rolled_back, aborted
    step: int  # index into spec.steps
    step_started_at: str
    reason: str | None
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row) -> "Rollout":
        data = dict(row)
        data["spec"] = RolloutSpec.model_validate_json(data["spec"])
        data["step"] = int(data["step"])
        return cls(**data)

    @property
    def weight(self) -> int:
        """Percent of the alias's users the candidate serves now."""
        if self.state == "promoted":
            return 100
        return self.spec.steps[self.step] if self.state in LIVE else 0


class RolloutStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def listed(self, alias: str | None = None) -> list[Rollout]:
        where, params = ("WHERE alias = ?", (alias,)) if alias else ("", ())
        rows = self.registry.query(
            f"SELECT {COLUMNS} FROM rollouts {where} ORDER BY created_at", params
        )
        return [Rollout.from_row(r) for r in rows]

    def live(self, alias: str) -> Rollout:
        found = [r for r in self.listed(alias) if r.state in LIVE]
        if not found:
            raise SparsegateError(f"no rollout running on alias {alias!r} (sparsegate rollout "
                                  "status)")  # fmt: skip
        return found[0]

    def events(self, rollout_id: str) -> list[dict]:
        rows = self.registry.query(
            "SELECT at, kind, actor, detail FROM rollout_events WHERE rollout_id = ? "
            "ORDER BY at", (rollout_id,),
        )  # fmt: skip
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]

    def start(
        self, alias: str, candidate: str, entry: str, reference: str, spec: RolloutSpec
    ) -> Rollout:
        stamp, rid = now(), uuid.uuid4().hex[:12]
        with self.registry.transaction() as tx:
            if tx.execute("SELECT id FROM rollouts WHERE alias = ? AND state IN (?, ?)",
                          (alias, *LIVE)):  # fmt: skip
                raise SparsegateError(
                    f"alias {alias!r} has a rollout running: abort it first (sparsegate "
                    f"rollout abort {alias})"
                )
            tx.execute(
                f"INSERT INTO rollouts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'running', 0, ?, "
                "NULL, ?, ?)",
                (
                    rid,
                    alias,
                    candidate,
                    entry,
                    reference,
                    spec.model_dump_json(),
                    stamp,
                    stamp,
                    stamp,
                ),
            )
            self._event(tx, rid, "started", {"candidate": candidate, "reference": reference,
                                             "spec": spec.model_dump()})  # fmt: skip
        return self.live(alias)

    def set_state(self, alias: str, state: str, kind: str, reason: str | None = None,
                  detail: dict | None = None, step: int | None = None) -> Rollout:  # fmt: skip
        """Move the alias's live rollout to `state` (and `step`), with an event."""
        with self.registry.transaction() as tx:
            rows = tx.execute(f"SELECT {COLUMNS} FROM rollouts WHERE alias = ? AND state IN "
                              "(?, ?)", (alias, *LIVE))  # fmt: skip
            if not rows:
                raise SparsegateError(f"no rollout running on alias {alias!r}")
            current = Rollout.from_row(rows[0])
            stamp = now()
            moved = step is not None and step != current.step
            tx.execute(
                "UPDATE rollouts SET state = ?, step = ?, reason = ?, updated_at = ?, "
                "step_started_at = ? WHERE id = ?",
                (state, current.step if step is None else step, reason, stamp,
                 stamp if moved else current.step_started_at, current.id),
            )  # fmt: skip
            self._event(tx, current.id, kind, (detail or {}) | {"reason": reason})
        return next(r for r in self.listed(alias) if r.id == current.id)

    @staticmethod
    def _event(tx, rollout_id: str, kind: str, detail: dict) -> None:
        tx.execute(
            "INSERT INTO rollout_events (at, rollout_id, kind, actor, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            (now_precise(), rollout_id, kind, actor(), json.dumps(detail)),
        )
