"""Python's own English documentation (`pydoc_data.topics`), split for calibration and
evaluation.

Each topic goes either to calibration or to evaluation by a hash of its text (some topics
share a text under several names), so the split is stable across runs and machines and no
evaluation text is ever seen in calibration.
"""

import hashlib
from typing import Literal

Split = Literal["calibration", "evaluation"]
_EVAL_SHARE = 5  # one topic in five is held out for evaluation


def _is_eval(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % _EVAL_SHARE == 0


def pydoc_texts(split: Split) -> list[str]:
    from pydoc_data.topics import topics

    want_eval = split == "evaluation"
    texts = dict.fromkeys(topics[k] for k in sorted(topics))  # dedupe, keep a stable order
    return [t for t in texts if _is_eval(t) == want_eval]
