"""The text a vocabulary is trimmed to: the default mining corpus, or a user's own.

The default is built offline and reproducibly from what is installed: the standard
library's sources (without `pydoc_data`, whose evaluation half is held out, and the
`test` package), up to PER_PACKAGE bytes of `.py/.md/.rst/.txt` per package of the
running (compress) environment, and the calibration half of the Python documentation,
files in sorted order. Same installation, same bytes, same sha256 (in the report), same
vocabulary.
"""

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from app.errors import SparsegateError

_SKIP = {"site-packages", "pydoc_data", "test", "idlelib", "lib2to3", "__pycache__"}
PER_PACKAGE = 4 << 20
_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".csv", ".html", ".yaml"}


@dataclass(frozen=True)
class MiningCorpus:
    text: str
    source: str
    files: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode())

    def as_dict(self) -> dict:
        return {"source": self.source, "files": self.files, "bytes": self.n_bytes,
                "sha256": self.sha256}  # fmt: skip


def default_corpus() -> MiningCorpus:
    from app.texts.corpus import pydoc_texts

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py") if not _SKIP & set(p.relative_to(stdlib).parts[:-1])
    )
    purelib = Path(sysconfig.get_paths()["purelib"])
    budget: dict[str, int] = {}
    for p in sorted(purelib.rglob("*")):
        if p.suffix in (".py", ".md", ".rst", ".txt") and p.is_file():
            top = p.relative_to(purelib).parts[0]
            if budget.get(top, 0) < PER_PACKAGE:
                budget[top] = budget.get(top, 0) + p.stat().st_size
                files.append(p)
    parts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    parts += pydoc_texts("calibration")
    return MiningCorpus(
        "\n\n".join(parts),
        f"Python {sysconfig.get_python_version()} standard library sources, up to "
        f"{PER_PACKAGE >> 20} MB of text per installed package, pydoc_data calibration half",
        len(files),
    )


def read_corpus(path: Path) -> MiningCorpus:
    """A user's text or traffic sample: one file, or every text file under a folder."""
    if not path.exists():
        raise SparsegateError(f"vocabulary corpus {path} not found")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
    else:
        files = [path]
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    if not text.strip():
        raise SparsegateError(f"vocabulary corpus {path} has no text")
    return MiningCorpus(text, str(path), len(files))


def check_disjoint(corpus: MiningCorpus) -> None:
    """A vocabulary mined on the evaluation text would flatter the variant: refuse it."""
    from app.texts.evaluation import EVAL_TEXTS

    # A probe without a line break can only lie within a line at least as long as itself:
    # searching those lines alone (0.7 MB of the default corpus's 96) gives the same answer
    # as searching the whole text, in 2 s instead of 47.
    probes = {t.key: t.probes() for t in EVAL_TEXTS}
    shortest = min((len(p) for ps in probes.values() for p in ps), default=0)
    long_lines = "\n".join(line for line in corpus.text.split("\n") if len(line) >= shortest)
    for t in EVAL_TEXTS:
        if any(p in (corpus.text if "\n" in p else long_lines) for p in probes[t.key]):
            raise SparsegateError(
                f"vocabulary corpus {corpus.source} contains the {t.key} evaluation text; "
                "mining must not see it"
            )
