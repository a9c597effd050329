"""The registry's interface and the logic both back ends share.

A back end keeps the records (a SQL database) and the files (a folder or an object store);
`Registry` holds what does not depend on which: lineage and stage rules, the quality gate,
sparse-at-rest expansion into the local folder `home`, and the rules of a draft.
SQL here is written once with `?` placeholders; each back end's `_Tx` runs it.
"""

import getpass
import json
import os
import shutil
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.errors import SparsegateError
from app.registry import expanded
from app.registry.files import INCOMPLETE_MARKER, make_readable, manifest
from app.registry.names import validate_name
from app.registry.records import FileEntry, Stage, Variant
from app.registry.sparse_store import SUFFIX as SPARSE_SUFFIX

STAGING = ".staging"
EXPANDED = ".expanded"
HOST = socket.gethostname()
COLUMNS = (
    "name, base, parent, source, recipe, files, bytes_on_disk, param_count, sparsity, "
    "quality, stage, created_at, updated_at"
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def now_precise() -> str:
    """To the microsecond: events of one second keep their order when sorted by time."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def actor() -> str:
    """Who made a change, for an audit: the operating-system user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def row_to_variant(row: Any) -> Variant:
    data = dict(row)
    for key in ("recipe", "quality"):
        data[key] = json.loads(data[key])
    data["files"] = [FileEntry(**f) for f in json.loads(data["files"])]
    return Variant(**data)


def variant_row(variant: Variant) -> tuple:
    """The values of `COLUMNS`, in order."""
    return (
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
    )


def _file_set(variant: Variant) -> set[tuple[str, str]]:
    return {(f.path, f.sha256) for f in variant.files}


class Tx(Protocol):
    def execute(self, sql: str, params: tuple | list = ()) -> list[Any]: ...


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
        created_at: str | None = None,
    ) -> Variant:
        make_readable(self.path)
        files = manifest(self.path)
        stamp = now()
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
            created_at=created_at or stamp,
            updated_at=stamp,
        )
        self.published = self.registry._publish(self, variant)
        return self.published


class Registry(ABC):
    """Records plus files. `home` is a local folder: the embedded back end keeps everything
    there; the shared one keeps there only job drafts and its cache of fetched variants."""

    home: Path

    # -- what a back end provides -----------------------------------------------------

    @abstractmethod
    def _read(self, sql: str, params: tuple | list = ()) -> list[Any]:
        """Rows of a query outside any write transaction."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Tx]:
        """A write transaction, serialized against every other writer of the registry."""

    def query(self, sql: str, params: tuple | list = ()) -> list[Any]:
        """Rows of a query on the registry's database (`?` placeholders), for the tables
        that live beside the variants (app/tenants/)."""
        return self._read(sql, params)

    def transaction(self) -> AbstractContextManager[Tx]:
        """A serialized write transaction on the registry's database."""
        return self._write()

    @abstractmethod
    def _publish(self, draft: Draft, variant: Variant) -> Variant:
        """Make the draft's files and the record appear together, or neither."""

    @abstractmethod
    def files_folder(self, variant: Variant) -> Path:
        """A local folder holding the variant's files as registered."""

    @abstractmethod
    def missing_files(self, name: str) -> list[str]:
        """Files of the record that its store does not hold (empty when complete)."""

    @abstractmethod
    def _delete_files(self, variant: Variant) -> None:
        """After the record is gone: delete the variant's files."""

    @abstractmethod
    def _collect_files(self) -> list[str]:
        """Delete files that no record and no live writer vouches for; what was removed."""

    @abstractmethod
    def describe(self) -> str:
        """Where the records and files live, for messages (never a secret)."""

    def close(self) -> None:
        return None

    # -- reading ---------------------------------------------------------------------

    def variants(self) -> list[Variant]:
        rows = self._read("SELECT * FROM variants ORDER BY base, created_at, name")
        return [row_to_variant(r) for r in rows]

    def find(self, name: str) -> Variant | None:
        rows = self._read("SELECT * FROM variants WHERE name = ?", (name,))
        return row_to_variant(rows[0]) if rows else None

    def get(self, name: str) -> Variant:
        variant = self.find(name)
        if variant is None:
            known = ", ".join(v.name for v in self.variants()) or "none"
            raise SparsegateError(f"unknown variant {name!r} (registered: {known})")
        return variant

    def servable_path(self, name: str) -> Path:
        """A local folder an engine can load: the variant's files, sparse ones expanded
        (`app.registry.expanded`: keyed by content, checked on every use)."""
        variant = self.get(name)
        folder = self.files_folder(variant)
        if not any(folder.glob(f"*{SPARSE_SUFFIX}")):
            return folder
        target = self.home / EXPANDED / expanded.content_key(variant)
        if target.exists():
            if expanded.intact(target):
                return target
            shutil.rmtree(target, ignore_errors=True)  # damaged: built again below
        expanded.build(folder, variant, target, f"{HOST}@{os.getpid()}")
        return target

    # -- writing ---------------------------------------------------------------------

    @contextmanager
    def draft(self, name: str) -> Iterator[Draft]:
        """A local staging folder for a new variant; discarded unless `publish()` was called."""
        validate_name(name)
        self.collect_garbage()
        self._check_free(name)
        # name@host@pid@nonce: lets the collector tell a live job's draft from a dead one's.
        path = self.home / STAGING / f"{name}@{HOST}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        (path / INCOMPLETE_MARKER).touch()
        draft = Draft(self, name, path)
        try:
            yield draft
        finally:
            if draft.published is None:
                shutil.rmtree(path, ignore_errors=True)

    def _check_free(self, name: str, tx: Tx | None = None) -> None:
        query = tx.execute if tx is not None else self._read
        if query("SELECT name FROM variants WHERE name = ?", (name,)):
            raise SparsegateError(f"variant {name!r} already exists; pick another --name")

    def _check_parent(self, tx: Tx, variant: Variant) -> None:
        if variant.parent is not None and not tx.execute(
            "SELECT name FROM variants WHERE name = ?", (variant.parent,)
        ):
            raise SparsegateError(f"parent variant {variant.parent!r} is not registered")

    def _get_in(self, tx: Tx, name: str) -> Variant:
        """A record read inside a write transaction (it holds until the commit)."""
        rows = tx.execute("SELECT * FROM variants WHERE name = ?", (name,))
        if not rows:
            raise SparsegateError(f"unknown variant {name!r}")
        return row_to_variant(rows[0])

    def _insert(self, tx: Tx, variant: Variant, **extra: str) -> None:
        columns = COLUMNS + "".join(f", {k}" for k in extra)
        values = variant_row(variant) + tuple(extra.values())
        marks = ", ".join("?" for _ in values)
        tx.execute(f"INSERT INTO variants ({columns}) VALUES ({marks})", values)

    def set_stage(
        self, name: str, stage: Stage, *, force: bool = False, quality_gate: float = 1.10
    ) -> list[str]:
        """Move a variant to `stage`; returns the names demoted from production by it."""
        demoted: list[str] = []
        with self._write() as tx:
            variant = self._get_in(tx, name)
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
                rows = tx.execute(
                    "SELECT name FROM variants"
                    " WHERE base = ? AND stage = 'production' AND name != ?",
                    (variant.base, name),
                )
                demoted = [r["name"] for r in rows]
                for d in demoted:
                    tx.execute(
                        "UPDATE variants SET stage = 'candidate', updated_at = ? WHERE name = ?",
                        (now(), d),
                    )
            tx.execute(
                "UPDATE variants SET stage = ?, updated_at = ? WHERE name = ?",
                (stage.value, now(), name),
            )
        return demoted

    def reject(self, name: str, evidence: dict[str, Any]) -> bool:
        """A candidate a live rollout rolled back: stage `rejected`, and the rollout's reason
        and evidence in its quality record (under "rollout"). A variant in production is
        left as it is (False): it serves other aliases, and a person decides."""
        with self._write() as tx:
            self._stages_ready(tx)
            variant = self._get_in(tx, name)
            if variant.stage is Stage.production:
                return False
            variant.quality["rollout"] = evidence
            tx.execute(
                "UPDATE variants SET stage = 'rejected', quality = ?, updated_at = ? "
                "WHERE name = ?", (json.dumps(variant.quality), now(), name),
            )  # fmt: skip
        return True

    def _stages_ready(self, tx: Tx) -> None:  # noqa: B027 (a hook: most back ends need none)
        """Make sure the records may take every stage (a migration where one is needed)."""

    def update_quality(self, name: str, figures: dict[str, Any]) -> Variant:
        """Merge `figures` into a variant's quality record (e.g. a new evaluation)."""
        with self._write() as tx:
            variant = self._get_in(tx, name)
            variant.quality.update(figures)
            tx.execute(
                "UPDATE variants SET quality = ?, updated_at = ? WHERE name = ?",
                (json.dumps(variant.quality), now(), name),
            )
        return variant

    def remove(self, name: str, *, force: bool = False) -> None:
        with self._write() as tx:
            variant = self._get_in(tx, name)
            children = [
                r["name"] for r in tx.execute("SELECT name FROM variants WHERE parent = ?", (name,))
            ]
            if children:
                raise SparsegateError(
                    f"{name} is the parent of {', '.join(children)}; remove those first"
                )
            if variant.stage is Stage.production and not force:
                raise SparsegateError(f"{name} is in production; retire it first or pass --force")
            self._before_delete(variant)
            tx.execute("DELETE FROM variants WHERE name = ?", (name,))
        self._delete_files(variant)

    def copy_from(
        self, source: "Registry", quality_gate: float = 1.10
    ) -> tuple[list[str], list[str]]:
        """Copy every variant of `source` that this registry lacks (files as stored, record
        as recorded: lineage, recipe, figures, stage); parents before children. A name
        present in both must hold the same files. A production variant arrives as a
        candidate and is promoted here as `models promote` would be (one production
        variant per base, the quality gate), unless this registry already has one for its
        base. Returns the names copied and a line for each one left a candidate."""
        copied: list[str] = []
        wanted: list[Variant] = []
        pending = source.variants()
        done = {v.name for v in self.variants()}
        while pending:
            ready = [v for v in pending if v.parent is None or v.parent in done]
            if not ready:
                raise SparsegateError(
                    f"{', '.join(v.name for v in pending)}: parents missing from the source"
                )
            for v in ready:
                pending.remove(v)
                mine = self.find(v.name)
                if mine is not None:
                    if _file_set(mine) != _file_set(v):
                        raise SparsegateError(
                            f"{v.name} exists in both registries with other files; "
                            "remove or rename one"
                        )
                    done.add(v.name)
                    continue
                folder = source.files_folder(v)
                with self.draft(v.name) as draft:
                    for f in v.files:
                        (draft.path / f.path).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(folder / f.path, draft.path / f.path)
                    published = draft.publish(
                        base=v.base, parent=v.parent, source=v.source, recipe=v.recipe,
                        param_count=v.param_count, sparsity=v.sparsity, quality=v.quality,
                        stage=Stage.candidate if v.stage is Stage.production else v.stage,
                        created_at=v.created_at.isoformat(),
                    )  # fmt: skip
                if _file_set(published) != _file_set(v):
                    raise SparsegateError(f"{v.name}: copied files differ from the source's")
                done.add(v.name)
                copied.append(v.name)
                if v.stage is Stage.production:
                    wanted.append(v)
        return copied, [note for v in wanted if (note := self._promote_copied(v, quality_gate))]

    def _promote_copied(self, v: Variant, quality_gate: float) -> str | None:
        """Promote a copy that was in production where it came from; why not, if not."""
        here = [p.name for p in self.variants() if p.base == v.base and p.stage is Stage.production]
        if here:
            return f"{v.name} stays a candidate: {here[0]} is production for {v.base} here"
        try:
            self.set_stage(v.name, Stage.production, quality_gate=quality_gate)
        except SparsegateError as e:
            return f"{v.name} stays a candidate: {e}"
        return None

    def _before_delete(self, variant: Variant) -> None:
        """Inside the deleting transaction, before the record goes (mark files as garbage)."""
        return None

    def collect_garbage(self) -> list[str]:
        """Delete what interrupted jobs left: this host's drafts of dead processes, and
        files that no record and no live writer vouches for."""
        removed: list[str] = []
        staging = self.home / STAGING
        for path in staging.iterdir() if staging.exists() else []:
            parts = path.name.split("@")
            if len(parts) == 4 and parts[1] == HOST and parts[2].isdigit():
                if pid_alive(int(parts[2])):
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
        return removed + self._collect_files()
