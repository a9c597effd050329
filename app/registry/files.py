"""File manifests: every file of a variant with its sha256 and size."""

import hashlib
import os
from pathlib import Path

from app.registry.records import FileEntry

# Written into a variant folder while it is not (or no longer) backed by a record;
# a folder that still carries it after a crash is garbage and gets collected.
INCOMPLETE_MARKER = ".incomplete"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def make_readable(folder: Path) -> None:
    """Some writers (safetensors) create files 0600; engines may run as another user."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def manifest(folder: Path) -> list[FileEntry]:
    return [
        FileEntry(
            path=p.relative_to(folder).as_posix(), sha256=sha256_file(p), bytes=p.stat().st_size
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != INCOMPLETE_MARKER
    ]
