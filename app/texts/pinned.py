"""Data files that `make setup` writes from pinned wheels, read back only when their sha256
is the pinned one: a missing or changed file is one readable error, never other text."""

import hashlib
from pathlib import Path

from app.errors import SparsegateError


def read_pinned(path: Path, sha256: str, what: str) -> str:
    if not path.is_file():
        raise SparsegateError(
            f"{what} {path} is missing: run `make setup` "
            "(or `python -m app.texts.evaluation fetch`)"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SparsegateError(f"{path} does not have the expected sha256; run `make setup`")
    return data.decode()
