"""API keys: the gateway keeps only each key's SHA-256 digest, with the routes it opens.

A key file holds one digest per line, optionally followed by its scope and a comment:
    <64 hex digits> [api|metrics]  # who holds it
`api` (the default) opens every route; `metrics` opens /metrics only (a scraper's key).
"""

import hashlib
import re
import secrets

SCOPES = ("api", "metrics")
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def is_digest(text: str) -> bool:
    """A SHA-256 hex digest (64 hex digits)."""
    return bool(_HEX.fullmatch(text))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """256 random bits, URL-safe; the prefix tells a leaked string for what it is."""
    return "sg-" + secrets.token_urlsafe(32)


def parse_key_file(text: str) -> dict[str, str]:
    """digest -> scope; ValueError naming the first bad line."""
    scopes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        key_digest, scope = fields[0], (fields[1] if len(fields) > 1 else "api")
        if not is_digest(key_digest) or len(fields) > 2 or scope not in SCOPES:
            raise ValueError(
                f"line {number} is not a SHA-256 hex digest, optionally followed by "
                f"{' or '.join(SCOPES)} (store sha256(key).hexdigest(), never the key itself)"
            )
        scopes[key_digest.lower()] = scope
    return scopes


def render_key_file(entries: list[tuple[str, str, str]]) -> str:
    """entries: (digest, scope, who holds it)."""
    lines = ["# sparsegate API keys: SHA-256 digests, never the keys (app/tenants/keys.py)"]
    lines += [f"{d} {scope}  # {who}" for d, scope, who in entries]
    return "\n".join(lines) + "\n"


def allows(scope: str, needed: str) -> bool:
    return scope == "api" or scope == needed
