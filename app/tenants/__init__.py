"""Tenants: API keys kept in the registry's database, each with the models it may use and
an expiry, created, rotated and revoked at run time, every change audited. The gateway
reads them (app/gateway/tenant_keys.py); the CLI manages them (app/cli/keys.py)."""
