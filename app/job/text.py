"""Calibration text for the job: the built-in texts (`app.texts`) or a user's file, kept
disjoint from the evaluation texts, cut into token windows.

The built-in calibration text is `mixed` by default: windows of the Python documentation's
calibration half and of general English prose (`app.texts.prose`), alternating, so that
calibration, LoRA and KD see both; `pydoc` keeps the documentation alone."""

import hashlib
from pathlib import Path
from typing import Literal

from app.errors import SparsegateError
from app.texts.corpus import Split, pydoc_texts
from app.texts.evaluation import EVAL_TEXTS, data_dir
from app.texts.prose import prose_documents

CalibrationText = Literal["mixed", "pydoc"]


def read_calibration_file(path: Path) -> str:
    """A user's calibration text, refused if it contains any of either evaluation text."""
    if not path.is_file():
        raise SparsegateError(f"calibration data file {path} not found")
    text = path.read_text(errors="replace")
    for t in EVAL_TEXTS:
        if any(p in text for p in t.probes()):
            raise SparsegateError(
                f"{path} contains held-out evaluation text ({t.key}); calibration must not"
            )
    return text


def calibration_sources(split: Split, kind: CalibrationText, text: str | None) -> dict[str, str]:
    """The texts windows are cut from, by name: a user's text, or the built-in ones."""
    if text is not None:
        return {"user file": text}
    sources = {f"pydoc_data {split} half": "\n\n".join(pydoc_texts(split))}
    if split == "calibration" and kind == "mixed":
        sources["English Wikipedia prose"] = "\n\n".join(prose_documents(data_dir()))
    return sources


def describe(sources: dict[str, str]) -> dict[str, dict]:
    """What the report records of each calibration text: its bytes and sha256."""
    return {
        name: {"bytes": len(t.encode()), "sha256": hashlib.sha256(t.encode()).hexdigest()}
        for name, t in sources.items()
    }


def token_windows(
    tokenizer, split: Split, n_windows: int, seq_len: int, text: str | None = None,
    kind: CalibrationText = "pydoc",
) -> list[list[int]]:  # fmt: skip
    """`n_windows` windows of `seq_len` tokens (BOS first where the tokenizer has one), taken
    in turn from each source text (`calibration_sources`) while each lasts."""
    sources = calibration_sources(split, kind, text)
    per_source = [_windows(tokenizer, t, seq_len) for t in sources.values()]
    windows = [w for turn in _round_robin(per_source) for w in turn]
    if len(windows) < n_windows:
        raise ValueError(f"only {len(windows)} {split} windows of {seq_len} tokens available")
    return windows[:n_windows]


def _windows(tokenizer, text: str, seq_len: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = seq_len - len(bos)
    return [bos + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]


def _round_robin(lists: list[list]) -> list[list]:
    """[[a1, b1], [a2, b2], ...]: one from each list per turn, a list that ran out skipped."""
    return [[x[i] for x in lists if i < len(x)] for i in range(max(map(len, lists)))]
