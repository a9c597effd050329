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
"""
