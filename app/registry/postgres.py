"""Records in PostgreSQL (psycopg 3): connection, schema and the serialized write transaction."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.errors import SparsegateError
from app.registry.rollout_tables import ROLLOUT_TABLES
from app.registry.tenant_tables import TENANT_TABLES, WRITTEN_BY_READERS

# Every write transaction takes this advisory lock first: writers run one at a time, as
# with SQLite's BEGIN IMMEDIATE, so a check made inside one holds until its commit.
# Registry writes are rare (a job's publish, a promote): the simplicity is worth it.
_WRITE_LOCK = 0x5_9A25_6A7E

SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    name          TEXT PRIMARY KEY,
    base          TEXT NOT NULL,
    parent        TEXT REFERENCES variants(name),
    source        TEXT NOT NULL DEFAULT '',
    recipe        TEXT NOT NULL DEFAULT '{}',
    files         TEXT NOT NULL DEFAULT '[]',
    bytes_on_disk BIGINT NOT NULL,
    param_count   BIGINT NOT NULL,
    sparsity      DOUBLE PRECISION NOT NULL,
    quality       TEXT NOT NULL DEFAULT '{}',
    stage         TEXT NOT NULL
                  CHECK (stage IN ('candidate', 'production', 'retired', 'rejected')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    location      TEXT NOT NULL
);
-- Uploads in progress: files under `variants/<name>/<upload_id>/` with no record yet.
-- Any host collects those whose lease expired (their writer died).
CREATE TABLE IF NOT EXISTS drafts (
    upload_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    holder        TEXT NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
"""
SCHEMA += TENANT_TABLES + ROLLOUT_TABLES


def allow_rejected(tx) -> None:
    """Registries made before the `rejected` stage get it in their stage check (by the first
    writer that rejects a variant: a reader's role may not alter the table)."""
    rows = tx.execute(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'variants'::regclass AND conname = 'variants_stage_check'"
    )
    if rows and "rejected" in rows[0]["def"]:
        return
    tx.execute("ALTER TABLE variants DROP CONSTRAINT IF EXISTS variants_stage_check")
    tx.execute(
        "ALTER TABLE variants ADD CONSTRAINT variants_stage_check "
        "CHECK (stage IN ('candidate', 'production', 'retired', 'rejected'))"
    )


TABLES = (
    "variants",
    "drafts",
    "api_keys",
    "key_audit",
    "key_limits",
    "key_usage",
    "rollouts",
    "rollout_events",
)
# Every role that may read the registry (the gateways' role, deploy/k8s/registry/
# initdb-reader.sh) may add usage rows: the gateways write them.
_READERS = """
SELECT DISTINCT grantee FROM information_schema.role_table_grants
WHERE table_name = 'variants' AND privilege_type = 'SELECT'
  AND grantee NOT IN (current_user, 'PUBLIC')
"""


def where(url: str) -> str:
    """host:port/dbname of a DSN, without user or password (for messages)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "the configured database (SPARSEGATE_REGISTRY_URL does not parse)"
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def _scrub(message: str, url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(url).get("password")
    except Exception:
        password = None
    text = " ".join(str(message).split())
    return text.replace(str(password), "***") if password else text


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: tuple | list = ()) -> list[Any]:
        cur = self._conn.execute(sql.replace("?", "%s"), params or None)
        return cur.fetchall() if cur.description else []


class Database:
    def __init__(self, url: str, *, create: bool) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.url = url
        self.where = where(url)
        try:
            self._conn = psycopg.connect(
                url, autocommit=True, row_factory=dict_row, connect_timeout=5
            )
        except psycopg.Error as e:
            raise SparsegateError(
                f"cannot open the registry database at {self.where}: {_scrub(str(e), url)}"
            ) from None
        found = self.read(
            "SELECT " + ", ".join(f"to_regclass('{t}') IS NOT NULL AS {t}" for t in TABLES)
        )[0]
        if all(found.values()):
            return  # (a reader's role may not create tables, so none is asked to)
        if not found["variants"] and not create:
            raise SparsegateError(
                f"no registry in the database at {self.where}: import a model first "
                "(sparsegate models import gemma-3-270m)"
            )
        if create:  # (an older registry opened to read gets the new tables from a writer)
            with self.write() as tx:
                tx.execute(SCHEMA)
                for row in tx.execute(_READERS):
                    role = '"' + row["grantee"].replace('"', '""') + '"'
                    tx.execute(f"GRANT INSERT ON {', '.join(WRITTEN_BY_READERS)} TO {role}")

    def read(self, sql: str, params: tuple | list = ()) -> list[Any]:
        import psycopg

        try:
            return _PgTx(self._conn).execute(sql, params)
        except psycopg.OperationalError as e:
            raise SparsegateError(
                f"lost the registry database at {self.where}: {_scrub(str(e), self.url)}"
            ) from None

    @contextmanager
    def write(self) -> Iterator[_PgTx]:
        import psycopg

        try:
            with self._conn.transaction():
                tx = _PgTx(self._conn)
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))
                yield tx
        except psycopg.errors.UniqueViolation as e:
            raise SparsegateError(f"already exists: {_scrub(str(e), self.url)}") from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise SparsegateError(
                f"the registry database at {self.where} refused a write: these credentials "
                f"are read-only (the gateway's or an engine's?): {_scrub(str(e), self.url)}"
            ) from None
        except psycopg.OperationalError as e:
            raise SparsegateError(
                f"lost the registry database at {self.where}: {_scrub(str(e), self.url)}"
            ) from None

    def close(self) -> None:
        self._conn.close()
