"""A general-language prior for vocabulary trimming: how much each token is worth in ordinary
English, from wordfreq's word frequencies (a pinned package, so offline and reproducible).

A domain's mining corpus (Python text, a traffic sample) ranks the tokens that domain uses,
but leaves out the ordinary words and names it happens not to say; split into pieces the
model never saw together, each such word costs far more than its extra token. The tokenizer's
own order is no substitute on a multilingual vocabulary (Gemma's ids do not follow English
frequency). So the rows the corpus does not claim go to tokens by the frequency of the words
they spell: each word as it appears mid-sentence (" word"), capitalised (" Word": names,
sentence starts) and at the start of a line ("Word"), weighted by its frequency in
wordfreq's blend of web, news, books, subtitles and Wikipedia text.
"""

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

LANGUAGE = "en"
WORDLIST = "large"  # every word down to a frequency of 1e-8: about 320k English words
LINE_START_WEIGHT = 0.1  # share of a word's uses at the start of a line (rough, and minor)


@dataclass(frozen=True)
class Prior:
    weights: Counter  # token id -> summed frequency of the words it helps spell
    source: str
    words: int
    sha256: str  # of the word list and its frequencies: same package, same prior

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "words": self.words, "tokens": len(self.weights),
                "sha256": self.sha256}  # fmt: skip


def english_prior(tokenizer: Any) -> Prior:
    from importlib.metadata import version

    import wordfreq

    table = wordfreq.get_frequency_dict(LANGUAGE, wordlist=WORDLIST)
    words = sorted(table, key=lambda w: (-table[w], w))
    digest = hashlib.sha256("\n".join(f"{w}\t{table[w]!r}" for w in words).encode())
    forms: list[tuple[str, float]] = []
    for w in words:
        capitalised = w[:1].upper() + w[1:]
        forms += [(" " + w, table[w]), (" " + capitalised, table[w]),
                  (capitalised, LINE_START_WEIGHT * table[w])]  # fmt: skip
    # The Rust tokenizer's batch call: half the time of transformers' wrapper on ~1M forms.
    encoded = tokenizer.backend_tokenizer.encode_batch(
        [form for form, _ in forms], add_special_tokens=False
    )
    weights: Counter = Counter()
    for enc, (_, f) in zip(encoded, forms, strict=True):
        for i in enc.ids:
            weights[i] += f
    return Prior(
        weights,
        f"wordfreq {version('wordfreq')} ({LANGUAGE}, {WORDLIST} list)",
        len(words),
        digest.hexdigest(),
    )
