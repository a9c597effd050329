"""Offline text for calibration and evaluation, kept disjoint.

Python ships its own English documentation in `pydoc_data.topics`; each topic goes
either to calibration or to evaluation by a hash of its text (some topics share a text
under several names), so the split is stable across runs and machines and no evaluation
text is ever seen in calibration.
"""

import hashlib
from pathlib import Path
from typing import Literal

from app.errors import SparsegateError

Split = Literal["calibration", "evaluation"]
_EVAL_SHARE = 5  # one topic in five is held out for evaluation


def _is_eval(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % _EVAL_SHARE == 0


def pydoc_texts(split: Split) -> list[str]:
    from pydoc_data.topics import topics

    want_eval = split == "evaluation"
    texts = dict.fromkeys(topics[k] for k in sorted(topics))  # dedupe, keep a stable order
    return [t for t in texts if _is_eval(t) == want_eval]


def read_calibration_file(path: Path) -> str:
    """A user's calibration text, refused if it contains any of either evaluation text."""
    from app.job.eval_texts import EVAL_TEXTS

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
