"""The shared back end: records in PostgreSQL, files in an S3-compatible object store.

For many hosts. A job stages its variant locally, as with the embedded back end; `publish`
takes a lease on an upload id, uploads the files under `variants/<name>/<upload id>/`
(each verified by SHA-256), then commits the record and drops the lease in one transaction.
A writer that dies leaves files under an expiring lease (or under none, if it died in
between), which any host's collector deletes; never a record without its files.

Hosts that serve a variant fetch its files into a local cache (`home/.cache/`), verified
against the record's SHA-256 on every use, and fetched again when a file is missing,
partial or corrupted.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from app.errors import SparsegateError
from app.registry.files import INCOMPLETE_MARKER, sha256_file
from app.registry.objects import ObjectStore
from app.registry.postgres import Database, allow_rejected
from app.registry.records import Variant
from app.registry.store import EXPANDED, HOST, Draft, Registry, Tx, pid_alive

CACHE = ".cache"


class SharedRegistry(Registry):
    def __init__(
        self,
        home: Path,
        url: str,
        artifacts: str,
        *,
        create: bool = False,
        lease_s: float = 900.0,
    ) -> None:
        self.home = Path(home)
        self.lease_s = lease_s
        self.db = Database(url, create=create)
        try:
            self.objects = ObjectStore(artifacts, create=create)
        except BaseException:
            self.db.close()
            raise
        self.home.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"PostgreSQL at {self.db.where}, files in {self.objects.url}"

    def close(self) -> None:
        self.db.close()

    def _read(self, sql: str, params: tuple | list = ()) -> list[Any]:
        return self.db.read(sql, params)

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self.db.write() as tx:
            yield tx

    def _stages_ready(self, tx: Tx) -> None:
        allow_rejected(tx)

    # -- publishing ------------------------------------------------------------------

    def _lease(self, tx: Tx, upload: str) -> bool:
        """Extend a live lease; False if it expired (its files may be collected)."""
        return bool(
            tx.execute(
                "UPDATE drafts SET expires_at = now() + make_interval(secs => ?)"
                " WHERE upload_id = ? AND expires_at > now() RETURNING upload_id",
                (self.lease_s, upload),
            )
        )

    def _publish(self, draft: Draft, variant: Variant) -> Variant:
        upload = uuid.uuid4().hex[:16]
        location = f"variants/{variant.name}/{upload}"
        with self._write() as tx:
            self._check_free(variant.name, tx)
            tx.execute(
                "INSERT INTO drafts VALUES (?, ?, ?, now() + make_interval(secs => ?))",
                (upload, variant.name, f"{HOST}:{os.getpid()}", self.lease_s),
            )
        try:
            for f in variant.files:
                with self._write() as tx:
                    if not self._lease(tx, upload):
                        raise SparsegateError(self._expired(variant.name))
                self.objects.upload(draft.path / f.path, f"{location}/{f.path}", f.sha256)
            with self._write() as tx:
                self._check_free(variant.name, tx)
                self._check_parent(tx, variant)
                gone = tx.execute(
                    "DELETE FROM drafts WHERE upload_id = ? AND expires_at > now()"
                    " RETURNING upload_id",
                    (upload,),
                )
                if not gone:
                    raise SparsegateError(self._expired(variant.name))
                self._insert(tx, variant, location=location)
        except BaseException:
            # Best effort: what is left here is collected once the lease expires.
            with suppress(Exception):
                self.objects.delete_prefix(location)
                with self._write() as tx:
                    tx.execute("DELETE FROM drafts WHERE upload_id = ?", (upload,))
            raise
        variant = variant.model_copy(update={"location": location})
        # The job's own files become this host's cached copy: no download to serve them.
        (draft.path / INCOMPLETE_MARKER).unlink(missing_ok=True)
        cache = self._cache_dir(variant)
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(draft.path, cache)
        except OSError:
            shutil.rmtree(draft.path, ignore_errors=True)
        return variant

    def _expired(self, name: str) -> str:
        return (
            f"the upload of {name!r} outlived its lease ({self.lease_s:.0f} s, "
            "SPARSEGATE_DRAFT_LEASE_S) and may have been collected; run the job again"
        )

    # -- files -------------------------------------------------------------------------

    def _cache_dir(self, variant: Variant) -> Path:
        assert variant.location is not None
        return self.home / CACHE / f"{variant.name}@{variant.location.rsplit('/', 1)[-1]}"

    def missing_files(self, name: str) -> list[str]:
        variant = self.get(name)
        stored = self.objects.sizes(variant.location or "")
        return [f.path for f in variant.files if stored.get(f.path) != f.bytes]

    def _verified(self, folder: Path, variant: Variant) -> bool:
        for f in variant.files:
            path = folder / f.path
            if not path.is_file() or path.stat().st_size != f.bytes:
                return False
            if sha256_file(path) != f.sha256:
                return False
        return True

    def files_folder(self, variant: Variant) -> Path:
        cache = self._cache_dir(variant)
        if cache.exists():
            if self._verified(cache, variant):
                return cache
            shutil.rmtree(cache, ignore_errors=True)  # corrupted or partial: fetch again
        missing = self.missing_files(variant.name)
        if missing:
            raise SparsegateError(
                f"variant {variant.name}: {len(missing)} of its files are missing from the "
                f"artifact store {self.objects.url}/{variant.location}: {', '.join(missing[:5])}"
            )
        tmp = self.home / CACHE / f".{cache.name}@{HOST}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        try:
            for f in variant.files:
                path = tmp / f.path
                path.parent.mkdir(parents=True, exist_ok=True)
                self.objects.download(f"{variant.location}/{f.path}", path)
                if sha256_file(path) != f.sha256:
                    raise SparsegateError(
                        f"variant {variant.name}: {f.path} in {self.objects.url} does not match "
                        "its recorded sha256 (corrupted in the store)"
                    )
            try:
                os.rename(tmp, cache)
            except OSError:  # another process fetched it first
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cache

    def _delete_files(self, variant: Variant) -> None:
        with suppress(SparsegateError):  # the collector retries what is left
            self.objects.delete_prefix(variant.location or "")
        for folder in (CACHE, EXPANDED):
            for path in (self.home / folder).glob(f"{variant.name}@*"):
                shutil.rmtree(path, ignore_errors=True)

    def _collect_files(self) -> list[str]:
        removed: list[str] = []
        # Expired leases: claimed (row deleted) under the write lock, so a writer that
        # publishes at the same moment either commits first or finds its lease gone.
        with self._write() as tx:
            expired = tx.execute(
                "DELETE FROM drafts WHERE expires_at <= now() RETURNING upload_id, name"
            )
        for row in expired:
            location = f"variants/{row['name']}/{row['upload_id']}"
            self.objects.delete_prefix(location)
            removed.append(f"{self.objects.url}/{location}")
        # Files under no record and no lease (a writer died between deleting its lease and
        # its files). Listed first: an upload that starts later holds a lease by then.
        listed = [
            f"variants/{name}/{upload}"
            for name in self.objects.folders("variants")
            for upload in self.objects.folders(f"variants/{name}")
        ]
        if listed:
            # Records and leases in one statement, so in one snapshot: a publish commits
            # (its lease becomes its record) wholly before or wholly after it.
            known = {
                r["location"]
                for r in self._read(
                    "SELECT location FROM variants UNION ALL"
                    " SELECT 'variants/' || name || '/' || upload_id FROM drafts"
                )
            }
            for location in listed:
                # (Some stores keep a "folder" with nothing under it: count objects.)
                if location not in known and self.objects.delete_prefix(location):
                    removed.append(f"{self.objects.url}/{location}")
        removed += self._collect_cache()
        return removed

    def _collect_cache(self) -> list[str]:
        """This host's cached copies of variants that are gone, and dead fetches."""
        removed: list[str] = []
        cache = self.home / CACHE
        if not cache.exists():
            return removed
        live = {self._cache_dir(v).name for v in self.variants()}
        for path in cache.iterdir():
            parts = path.name.split("@")
            if path.name.startswith("."):
                dead = (
                    len(parts) == 4
                    and parts[1] == HOST
                    and parts[2].isdigit()
                    and not pid_alive(int(parts[2]))
                )
            else:
                dead = path.name not in live
            if dead:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        return removed
