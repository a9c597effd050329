"""The tables that live beside the variants in the registry's database for app/tenants/
(plain SQL that SQLite and PostgreSQL both take)."""

TENANT_TABLES = """
-- API keys of tenants (app/tenants/): the key's SHA-256 only, never the key.
CREATE TABLE IF NOT EXISTS api_keys (
    name          TEXT PRIMARY KEY,
    digest        TEXT NOT NULL UNIQUE,
    models        TEXT NOT NULL DEFAULT '[]',
    expires_at    TEXT,
    revoked_at    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_audit (
    at            TEXT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    name          TEXT NOT NULL,
    detail        TEXT NOT NULL DEFAULT '{}'
);
-- A key's limits (NULL: none), apart from api_keys so that a registry made before limits
-- existed gets them by CREATE TABLE alone.
CREATE TABLE IF NOT EXISTS key_limits (
    name            TEXT PRIMARY KEY,
    rpm             BIGINT,
    tpm             BIGINT,
    max_inflight    BIGINT,
    budget_dollars  DOUBLE PRECISION,
    budget_period_s BIGINT
);
-- What each gateway process served to each key, added every few seconds: the rows sum to
-- the key's usage (`sparsegate keys usage`, billing, budgets).
CREATE TABLE IF NOT EXISTS key_usage (
    at                TEXT NOT NULL,
    name              TEXT NOT NULL,
    variant           TEXT NOT NULL,
    requests          BIGINT NOT NULL,
    errors            BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    output_bytes      BIGINT NOT NULL,
    dollars           DOUBLE PRECISION NOT NULL,
    unpriced          BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS key_usage_by_name ON key_usage (name, at);
"""
# The tables the registry's readers (gateways) add rows to: usage, and rollout evidence.
WRITTEN_BY_READERS = ("key_usage", "rollout_samples")
