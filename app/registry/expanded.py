"""The expansion cache: a variant's files with its sparse-at-rest weights expanded, as an
engine loads them, under `<home>/.expanded/<name>@<digest of the recorded files>`.

Keyed by content, not by name or location: a name registered again with other files, or a
shared cache fetched again, never finds an older expansion. Checked on every use against
the sha256s it was built to (a manifest written with it): its plain files are hard links
into the registry's copy, so a file corrupted in place there is corrupted here too, and is
then built again from a good copy.
"""

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from app.errors import SparsegateError
from app.registry.files import sha256_file
from app.registry.records import Variant
from app.registry.sparse_store import SUFFIX as SPARSE_SUFFIX
from app.registry.sparse_store import expand

MANIFEST = ".sparsegate-expanded.json"


def content_key(variant: Variant) -> str:
    lines = "\n".join(sorted(f"{f.path}:{f.sha256}" for f in variant.files))
    return f"{variant.name}@{hashlib.sha256(lines.encode()).hexdigest()[:16]}"


def intact(folder: Path) -> bool:
    """Every file the manifest names is there with its sha256."""
    try:
        expected = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return all(
        (folder / name).is_file() and sha256_file(folder / name) == sha
        for name, sha in expected.items()
    )


def build(folder: Path, variant: Variant, target: Path, tag: str) -> None:
    """Expand `folder` (the variant's files as registered) into `target`, atomically."""
    recorded = {f.path: f.sha256 for f in variant.files}
    tmp = target.with_name(f"{target.name}@{tag}@{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        manifest = {}
        for f in sorted(folder.iterdir()):
            if not f.is_file():
                continue
            if f.name.endswith(SPARSE_SUFFIX):
                dense = f.name.removesuffix(SPARSE_SUFFIX) + ".safetensors"
                manifest[dense] = expand(f, tmp / dense)  # checked against the dense sha256
                continue
            os.link(f, tmp / f.name)  # same bytes, no copy
            manifest[f.name] = sha256_file(tmp / f.name)
            if f.name in recorded and manifest[f.name] != recorded[f.name]:
                raise SparsegateError(
                    f"variant {variant.name}: {f} does not match its recorded sha256"
                )
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        try:
            os.rename(tmp, target)
        except OSError:  # another process expanded it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
