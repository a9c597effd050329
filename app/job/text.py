"""Calibration text for the job: the built-in split (`app.texts.corpus`) or a user's file,
kept disjoint from the evaluation texts, cut into token windows."""

from pathlib import Path

from app.errors import SparsegateError
from app.texts.corpus import Split, pydoc_texts
from app.texts.evaluation import EVAL_TEXTS


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


def token_windows(
    tokenizer, split: Split, n_windows: int, seq_len: int, text: str | None = None
) -> list[list[int]]:
    """`n_windows` windows of `seq_len` tokens (BOS first where the tokenizer has one).

    `text` replaces the built-in text of the split (a user's calibration file)."""
    text = text if text is not None else "\n\n".join(pydoc_texts(split))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = seq_len - len(bos)
    windows = [bos + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]
    if len(windows) < n_windows:
        raise ValueError(f"only {len(windows)} {split} windows of {seq_len} tokens available")
    return windows[:n_windows]
