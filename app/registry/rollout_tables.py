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
-- Live evidence, added by every gateway process every few seconds: one row per quality
-- sample (x, y: the candidate's and the reference's bits on one text), and per variant the
-- alias's requests and errors counted since the last row (kind 'requests').
CREATE TABLE IF NOT EXISTS rollout_samples (
    at          TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    step        BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    variant     TEXT NOT NULL,
    x           DOUBLE PRECISION NOT NULL DEFAULT 0,
    y           DOUBLE PRECISION NOT NULL DEFAULT 0,
    requests    BIGINT NOT NULL DEFAULT 0,
    errors      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rollout_samples_by_step ON rollout_samples (rollout_id, step);
-- Who decides: the controller holding this lease until it expires (one of several).
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
"""
