"""The embedded back end: SQLite records plus one folder per variant under `home`.

For one machine (the default). Atomicity: a job writes its variant into a draft folder under
`.staging/`; `publish` moves it into place and inserts the record inside one write
transaction, so another process sees either nothing or a complete, hashed variant.
Interrupted jobs leave only drafts (or marked folders) that the next writer collects.
SQLite must sit on a local disk: WAL does not work over a network filesystem (use the
shared back end past one machine).
"""

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from app.errors import SparsegateError
from app.registry.files import INCOMPLETE_MARKER
from app.registry.names import validate_name
from app.registry.records import Variant
from app.registry.rollout_tables import ROLLOUT_TABLES
from app.registry.store import EXPANDED, STAGING, Draft, Registry, Tx
from app.registry.tenant_tables import TENANT_TABLES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    name          TEXT PRIMARY KEY,
    base          TEXT NOT NULL,
    parent        TEXT REFERENCES variants(name),
    source        TEXT NOT NULL DEFAULT '',
    recipe        TEXT NOT NULL DEFAULT '{}',
    files         TEXT NOT NULL DEFAULT '[]',
    bytes_on_disk INTEGER NOT NULL,
    param_count   INTEGER NOT NULL,
    sparsity      REAL NOT NULL,
    quality       TEXT NOT NULL DEFAULT '{}',
    stage         TEXT NOT NULL
                  CHECK (stage IN ('candidate', 'production', 'retired', 'rejected')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
"""
_SCHEMA += TENANT_TABLES + ROLLOUT_TABLES


@contextmanager
def _setup_lock(home: Path) -> Iterator[None]:
    """An exclusive lock on the registry's folder itself (no extra file to leave behind)."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _allow_rejected(db: sqlite3.Connection) -> None:
    """Registries made before the `rejected` stage get it in their stage check. SQLite
    cannot alter a check, so the table is made again and its rows copied, in one
    transaction (SQLite's own recipe for schema changes, foreign keys off meanwhile)."""
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'variants'").fetchone()
    if "'rejected'" in sql:
        return
    table = _SCHEMA.split(";")[0].replace("IF NOT EXISTS variants", "variants_new")
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(table)
        columns = ", ".join(r[1] for r in db.execute("PRAGMA table_info(variants_new)"))
        db.execute(f"INSERT INTO variants_new ({columns}) SELECT {columns} FROM variants")
        db.execute("DROP TABLE variants")
        db.execute("ALTER TABLE variants_new RENAME TO variants")
        db.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if "readonly" not in str(e):
            raise
        # A read-only file (an engine's mount): the first writer to open it migrates it.
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.execute("PRAGMA foreign_keys = ON")


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: tuple | list = ()) -> list[Any]:
        return self._db.execute(sql, params).fetchall()


class EmbeddedRegistry(Registry):
    def __init__(self, home: Path, *, create: bool = False) -> None:
        self.home = Path(home)
        self.db_path = self.home / "registry.db"
        if not self.db_path.exists():
            if not create:
                raise SparsegateError(
                    f"no registry at {self.home}/ (registry.db missing): import a model first "
                    "(sparsegate models import gemma-3-270m) or set SPARSEGATE_HOME / --registry "
                    "to an existing one"
                )
            self.home.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA foreign_keys = ON")
        # Switching to WAL and creating the schema take locks that SQLite may refuse at once
        # ("database is locked") without waiting on busy_timeout when several processes open a
        # new registry together; a file lock makes that first set-up one process at a time.
        with _setup_lock(self.home):
            if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
            _allow_rejected(self._db)

    def describe(self) -> str:
        return f"{self.home}/ (SQLite)"

    def close(self) -> None:
        self._db.close()

    def path_of(self, name: str) -> Path:
        return self.home / validate_name(name)

    def _read(self, sql: str, params: tuple | list = ()) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        # IMMEDIATE takes the write lock up front, so the checks made inside hold until commit.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTx(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def files_folder(self, variant: Variant) -> Path:
        return self.path_of(variant.name)

    def missing_files(self, name: str) -> list[str]:
        variant = self.get(name)
        folder = self.path_of(variant.name)
        return [
            f.path
            for f in variant.files
            if not (folder / f.path).is_file() or (folder / f.path).stat().st_size != f.bytes
        ]

    def _check_free(self, name: str, tx: Tx | None = None) -> None:
        super()._check_free(name, tx)
        if self.path_of(name).exists():
            raise SparsegateError(
                f"{self.path_of(name)} exists but is not registered; move it away"
            )

    def _publish(self, draft: Draft, variant: Variant) -> Variant:
        final = self.path_of(draft.name)
        with self._write() as tx:
            self._check_free(draft.name, tx)
            self._check_parent(tx, variant)
            os.rename(draft.path, final)
            try:
                self._insert(tx, variant)
            except BaseException:
                os.rename(final, draft.path)
                raise
        # Committed: the record now vouches for the folder.
        (final / INCOMPLETE_MARKER).unlink(missing_ok=True)
        return variant

    def _before_delete(self, variant: Variant) -> None:
        # Marked first: if we die after the commit, the folder is known garbage.
        folder = self.path_of(variant.name)
        if folder.exists():
            (folder / INCOMPLETE_MARKER).touch()

    def _delete_files(self, variant: Variant) -> None:
        shutil.rmtree(self.path_of(variant.name), ignore_errors=True)
        for path in (self.home / EXPANDED).glob(f"{variant.name}@*"):
            shutil.rmtree(path, ignore_errors=True)

    def _collect_files(self) -> list[str]:
        removed: list[str] = []
        # Under the write lock: a publish renames its folder (still marked) and commits
        # the record in one transaction, so a marked folder seen here has no live writer.
        with self._write() as tx:
            for marker in self.home.glob(f"*/{INCOMPLETE_MARKER}"):
                folder = marker.parent
                if folder.parent != self.home or folder.name == STAGING:
                    continue
                if not tx.execute("SELECT name FROM variants WHERE name = ?", (folder.name,)):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(str(folder))
                else:
                    with suppress(FileNotFoundError):
                        marker.unlink()
        return removed
