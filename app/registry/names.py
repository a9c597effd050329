"""Variant names double as folder names and URL path segments, so they are kept strict."""

import re

from app.errors import SparsegateError

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_name(name: str) -> str:
    """Return `name` if it is a valid variant name, else raise a readable error."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise SparsegateError(
            f"invalid variant name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '..', no '/')"
        )
    return name


def name_from_source(source: str) -> str:
    """A default variant name for an imported model: 'google/gemma-3-270m' -> 'gemma-3-270m'."""
    tail = source.rstrip("/").rsplit("/", 1)[-1].lower()
    tail = re.sub(r"[^a-z0-9._-]+", "-", tail).strip("-._")
    return validate_name(tail[:64] or "model")
