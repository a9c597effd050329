"""The model registry: an SQLite database plus one folder per variant under `home`.

Atomicity: a job writes its variant into a draft folder under `.staging/`; `publish`
moves it into place and inserts the record inside one write transaction, so another
process sees either nothing or a complete, hashed variant. Interrupted jobs leave only
drafts (or marked folders) that the next writer collects.
"""

import fcntl
import json
import os
import shutil
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.errors import SparsegateError
from app.registry.files import INCOMPLETE_MARKER, make_readable, manifest
from app.registry.names import validate_name
from app.registry.records import FileEntry, Stage, Variant
from app.registry.sparse_store import SUFFIX as SPARSE_SUFFIX
from app.registry.sparse_store import expand

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
    stage         TEXT NOT NULL CHECK (stage IN ('candidate', 'production', 'retired')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
)
"""
_STAGING = ".staging"
_EXPANDED = ".expanded"
_HOST = socket.gethostname()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _row_to_variant(row: sqlite3.Row) -> Variant:
    data = dict(row)
    for key in ("recipe", "quality"):
        data[key] = json.loads(data[key])
    data["files"] = [FileEntry(**f) for f in json.loads(data["files"])]
    return Variant(**data)


class Draft:
    """A variant being written. Write files under `path`, then `publish()`."""

    def __init__(self, registry: "Registry", name: str, path: Path) -> None:
        self.registry = registry
        self.name = name
        self.path = path
        self.published: Variant | None = None

    def publish(
        self,
        *,
        base: str | None = None,
        parent: str | None = None,
        source: str = "",
        recipe: dict[str, Any] | None = None,
        param_count: int = 0,
        sparsity: float = 0.0,
        quality: dict[str, Any] | None = None,
        stage: Stage = Stage.candidate,
    ) -> Variant:
        make_readable(self.path)
        files = manifest(self.path)
        now = _now()
        variant = Variant(
            name=self.name,
            base=base or self.name,
            parent=parent,
            source=source,
            recipe=recipe or {},
            files=files,
            bytes_on_disk=sum(f.bytes for f in files),
            param_count=param_count,
            sparsity=sparsity,
            quality=quality or {},
            stage=stage,
            created_at=now,
            updated_at=now,
        )
        self.published = self.registry._publish(self, variant)
        return self.published


@contextmanager
def _setup_lock(home: Path) -> Iterator[None]:
    """An exclusive lock on the registry's folder itself (no extra file to leave behind)."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Registry:
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
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- reading ---------------------------------------------------------------------

    def variants(self) -> list[Variant]:
        rows = self._db.execute("SELECT * FROM variants ORDER BY base, created_at, name")
        return [_row_to_variant(r) for r in rows]

    def find(self, name: str) -> Variant | None:
        row = self._db.execute("SELECT * FROM variants WHERE name = ?", (name,)).fetchone()
        return _row_to_variant(row) if row else None

    def get(self, name: str) -> Variant:
        variant = self.find(name)
        if variant is None:
            known = ", ".join(v.name for v in self.variants()) or "none"
            raise SparsegateError(f"unknown variant {name!r} (registered: {known})")
        return variant

    def path_of(self, name: str) -> Path:
        return self.home / validate_name(name)

    def servable_path(self, name: str) -> Path:
        """A folder an engine can load: the variant's own, or its sparse files expanded.

        Expansion is cached under `.expanded/` and written atomically (temp folder, rename)."""
        folder = self.path_of(self.get(name).name)
        sparse = sorted(folder.glob(f"*{SPARSE_SUFFIX}"))
        if not sparse:
            return folder
        target = self.home / _EXPANDED / name
        if target.exists():
            return target
        tmp = self.home / _EXPANDED / f"{name}@{_HOST}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for f in folder.iterdir():
                if f.is_file() and not f.name.endswith(SPARSE_SUFFIX):
                    os.link(f, tmp / f.name)  # same bytes, no copy
            for f in sparse:
                expand(f, tmp / (f.name.removesuffix(SPARSE_SUFFIX) + ".safetensors"))
            try:
                os.rename(tmp, target)
            except OSError:  # another process expanded it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    # -- writing ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so the checks made inside hold until commit.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def draft(self, name: str) -> Iterator[Draft]:
        """A staging folder for a new variant; discarded unless `publish()` was called."""
        validate_name(name)
        self.collect_garbage()
        self._check_free(name)
        # name@host@pid@nonce: lets the collector tell a live job's draft from a dead one's.
        path = self.home / _STAGING / f"{name}@{_HOST}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        (path / INCOMPLETE_MARKER).touch()
        draft = Draft(self, name, path)
        try:
            yield draft
        finally:
            if draft.published is None:
                shutil.rmtree(path, ignore_errors=True)

    def _check_free(self, name: str) -> None:
        if self.find(name) is not None:
            raise SparsegateError(f"variant {name!r} already exists; pick another --name")
        if self.path_of(name).exists():
            raise SparsegateError(
                f"{self.path_of(name)} exists but is not registered; move it away"
            )

    def _publish(self, draft: Draft, variant: Variant) -> Variant:
        final = self.path_of(draft.name)
        with self._write() as db:
            self._check_free(draft.name)
            if variant.parent is not None and self.find(variant.parent) is None:
                raise SparsegateError(f"parent variant {variant.parent!r} is not registered")
            os.rename(draft.path, final)
            try:
                db.execute(
                    "INSERT INTO variants VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        variant.name,
                        variant.base,
                        variant.parent,
                        variant.source,
                        json.dumps(variant.recipe),
                        json.dumps([f.model_dump() for f in variant.files]),
                        variant.bytes_on_disk,
                        variant.param_count,
                        variant.sparsity,
                        json.dumps(variant.quality),
                        variant.stage.value,
                        variant.created_at.isoformat(),
                        variant.updated_at.isoformat(),
                    ),
                )
            except BaseException:
                os.rename(final, draft.path)
                raise
        # Committed: the record now vouches for the folder.
        (final / INCOMPLETE_MARKER).unlink(missing_ok=True)
        return variant

    def set_stage(
        self, name: str, stage: Stage, *, force: bool = False, quality_gate: float = 1.10
    ) -> list[str]:
        """Move a variant to `stage`; returns the names demoted from production by it."""
        demoted: list[str] = []
        with self._write() as db:
            variant = self.get(name)
            if stage is Stage.production:
                # Bits per byte, the worse of in and out of domain: comparable across
                # tokenizers, and a variant tuned to one domain cannot hide the other.
                ratio = variant.quality.get("bpb_ratio_max")
                if variant.parent is not None and not force:
                    if ratio is None:
                        raise SparsegateError(
                            f"{name} has no bits-per-byte figure to check against the quality "
                            "gate (a record from an older job); pass --force to promote it"
                        )
                    if ratio > quality_gate:
                        raise SparsegateError(
                            f"{name} has bits per byte {ratio:.3f}× its dense base's, over the "
                            f"quality gate {quality_gate:.3f}; pass --force to promote it anyway"
                        )
                # One production variant per base: the alias of a base resolves to it.
                rows = db.execute(
                    "SELECT name FROM variants"
                    " WHERE base = ? AND stage = 'production' AND name != ?",
                    (variant.base, name),
                ).fetchall()
                demoted = [r["name"] for r in rows]
                db.executemany(
                    "UPDATE variants SET stage = 'candidate', updated_at = ? WHERE name = ?",
                    [(_now(), d) for d in demoted],
                )
            db.execute(
                "UPDATE variants SET stage = ?, updated_at = ? WHERE name = ?",
                (stage.value, _now(), name),
            )
        return demoted

    def update_quality(self, name: str, figures: dict[str, Any]) -> Variant:
        """Merge `figures` into a variant's quality record (e.g. a new evaluation)."""
        with self._write() as db:
            variant = self.get(name)
            variant.quality.update(figures)
            db.execute(
                "UPDATE variants SET quality = ?, updated_at = ? WHERE name = ?",
                (json.dumps(variant.quality), _now(), name),
            )
        return variant

    def remove(self, name: str, *, force: bool = False) -> None:
        folder = self.path_of(name)
        with self._write() as db:
            variant = self.get(name)
            children = [v.name for v in self.variants() if v.parent == name]
            if children:
                raise SparsegateError(
                    f"{name} is the parent of {', '.join(children)}; remove those first"
                )
            if variant.stage is Stage.production and not force:
                raise SparsegateError(f"{name} is in production; retire it first or pass --force")
            # Marked first: if we die after the commit, the folder is known garbage.
            if folder.exists():
                (folder / INCOMPLETE_MARKER).touch()
            db.execute("DELETE FROM variants WHERE name = ?", (name,))
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.home / _EXPANDED / name, ignore_errors=True)

    def collect_garbage(self) -> list[Path]:
        """Delete what interrupted jobs left: drafts of dead processes, unbacked folders."""
        removed: list[Path] = []
        with self._write():
            staging = self.home / _STAGING
            for path in staging.iterdir() if staging.exists() else []:
                parts = path.name.split("@")
                if len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit():
                    if _pid_alive(int(parts[2])):
                        continue
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            for marker in self.home.glob(f"*/{INCOMPLETE_MARKER}"):
                folder = marker.parent
                if folder.parent != self.home or folder.name == _STAGING:
                    continue
                if self.find(folder.name) is None:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                else:
                    with suppress(FileNotFoundError):
                        marker.unlink()
        return removed
