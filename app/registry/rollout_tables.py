"""The tables of progressive rollouts (app/rollouts/), beside the variants in the registry's
database (plain SQL that SQLite and PostgreSQL both take)."""

ROLLOUT_TABLES = """
-- A rollout of a candidate on an alias: its spec (steps, gates), where it stands, why.
CREATE TABLE IF NOT EXISTS rollouts (
    id              TEXT PRIMARY KEY,
    alias           TEXT NOT NULL,
    candidate       TEXT NOT NULL,
    candidate_entry TEXT NOT NULL,  -- its name in the registry (promoted at 100%)
    reference       TEXT NOT NULL,
    spec            TEXT NOT NULL,
    state           TEXT NOT NULL,
    step            BIGINT NOT NULL,
    step_started_at TEXT NOT NULL,
    reason          TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
-- At most one live rollout per alias, held by the database itself (two starts at once).
CREATE UNIQUE INDEX IF NOT EXISTS one_live_rollout_per_alias ON rollouts (alias)
    WHERE state IN ('running', 'paused');
-- What happened, with its evidence: started, advanced, paused, resumed, rolled back, ...
CREATE TABLE IF NOT EXISTS rollout_events (
    at          TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
"""
