"""Vocabulary trimming: structured pruning of the embedding and LM head.

On Gemma 3 270M the tied embedding / LM head is 168 M of 268 M parameters (262,144
tokens × 640) and every decoded token pays for all of it; pruning the layers leaves it
alone. Trimming keeps the K rows a deployment's text uses:

- must keep: special and added tokens, byte-fallback tokens (or, without byte fallback,
  every single-character token: the alphabet), the ids the config and generation config
  name, and every token of the chat template;
- then tokens by frequency in the mining corpus (ties: lower id first) up to a share of
  the rows, the rest by a general-language prior (`app/job/vocab_prior.py`: the frequency
  of the English words a token spells), then by the tokenizer's own ranking among pieces
  written in the corpus's characters (`CORPUS_SHARE` says why); each token with its
  closure over BPE merges (the intermediate tokens BPE builds it from), while the total
  stays within K;
- merges are kept only where both parts and the result are kept, so the trimmed
  tokenizer can never produce a removed token; a word whose original tokens are all kept
  tokenizes exactly as before (BPE builds each final token from its own characters by
  the same merges), with ids renumbered in the original order.

No maintained library does this for BPE (vocabtrimmer handles Unigram and keeps old ids),
so it lives here, on the `tokenizers` JSON format.
"""

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.errors import SparsegateError

_BYTE = re.compile(r"<0x[0-9A-F]{2}>")
MINE_CHUNK = 1 << 16  # characters per encode call: bounded memory, batched for speed


@dataclass
class VocabPlan:
    keep: list[int]  # old ids, ascending: new id = position
    rows_before: int
    must_keep: int
    closure_added: int
    mined_distinct: int  # distinct tokens seen in the mining corpus
    old_to_new: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.old_to_new = {old: new for new, old in enumerate(self.keep)}

    def as_dict(self) -> dict[str, Any]:
        return {"rows_before": self.rows_before, "rows_kept": len(self.keep),
                "must_keep": self.must_keep, "closure_added": self.closure_added,
                "mined_distinct": self.mined_distinct}  # fmt: skip


def _tokenizer_json(tokenizer: Any) -> dict:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind not in ("BPE", "Unigram"):
        raise SparsegateError(
            f"cannot trim a {kind} tokenizer's vocabulary: only BPE and Unigram are supported"
        )
    if kind == "BPE" and (
        spec["model"].get("continuing_subword_prefix") or spec["model"].get("end_of_word_suffix")
    ):
        raise SparsegateError("cannot trim a BPE tokenizer with subword prefixes or suffixes")
    return spec


def _byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))


def _merges(spec: dict) -> list[tuple[str, str]]:
    merges = spec["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def must_keep_ids(tokenizer: Any, spec: dict, config_ids: set[int]) -> set[int]:
    vocab = tokenizer.get_vocab()
    keep = set(tokenizer.added_tokens_decoder) | {i for i in config_ids if i is not None}
    model = spec["model"]
    if model["type"] == "BPE" and not model.get("byte_fallback"):
        keep |= {i for piece, i in model["vocab"].items() if len(piece) == 1}
    keep |= {i for piece, i in vocab.items() if _BYTE.fullmatch(piece)}
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        keep.add(model["unk_id"])
    if tokenizer.chat_template:
        conversation = [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Bye"},
        ]
        rendered = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        keep |= set(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return keep


def mine(tokenizer: Any, text: str, on_chunks=lambda n: None) -> Counter:
    """Token frequencies of `text` under the original tokenizer; `on_chunks(n)` after each
    batch of n chunks of MINE_CHUNK characters."""
    counts: Counter = Counter()
    chunks = [text[i : i + MINE_CHUNK] for i in range(0, len(text), MINE_CHUNK)]
    batch = 32
    for start in range(0, len(chunks), batch):
        encoded = tokenizer(chunks[start : start + batch], add_special_tokens=False)
        for ids in encoded["input_ids"]:
            counts.update(ids)
        on_chunks(len(encoded["input_ids"]))
    return counts


def _derivation(piece: str, ranks: dict[tuple[str, str], int], vocab: dict[str, int]) -> list[str]:
    """The tokens BPE builds `piece` from, when it is tokenized alone (empty if BPE never
    builds it by merges: single characters, added tokens)."""
    symbols = list(piece)
    if len(symbols) < 2 or any(s not in vocab for s in symbols):
        return []
    built = []
    while len(symbols) > 1:
        best = min(
            range(len(symbols) - 1),
            key=lambda i: ranks.get((symbols[i], symbols[i + 1]), 1 << 62),
        )
        if (symbols[best], symbols[best + 1]) not in ranks:
            return []  # BPE cannot build it from its own characters
        symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        built.append(symbols[best])
    return [*piece, *built[:-1]] if symbols == [piece] else []


def check_k(tokenizer: Any, k: int, config_ids: set[int], spec: dict | None = None) -> set[int]:
    """The ids that must be kept, once K is known to leave room for them."""
    must = must_keep_ids(tokenizer, spec or _tokenizer_json(tokenizer), config_ids)
    rows = len(tokenizer)
    if k > rows:
        raise SparsegateError(f"--trim-vocab {k} is above the vocabulary's {rows} tokens")
    if k < len(must):
        raise SparsegateError(
            f"--trim-vocab {k} is below the {len(must)} tokens that must be kept "
            "(special, added, byte-fallback and chat-template tokens)"
        )
    return must


# Share of the free rows (K minus what must be kept) filled by mining-corpus frequency; the
# rest follow the general-language prior, then the tokenizer's own ranking (SentencePiece
# score / BPE merge order) among pieces written in the corpus's characters. Corpus
# frequency alone leaves common English words and names out (a Python corpus rarely says
# "leaders" or "Afghanistan"), and a word split into pieces the model never saw together
# costs it far more than the extra token (README: figures).
CORPUS_SHARE = 0.6


# A character the corpus writes at least this often (share of its characters) counts as
# one of its scripts: a handful of stray symbols must not admit thousands of CJK pieces.
MIN_CHAR_SHARE = 1e-5


def written_chars(text: str) -> set[str]:
    counts = Counter(text)
    floor = MIN_CHAR_SHARE * len(text)
    return {ch for ch, n in counts.items() if n >= floor}


def plan(
    tokenizer: Any,
    counts: Counter,
    k: int,
    config_ids: set[int],
    corpus_chars: set[str],
    prior: Counter | None = None,
) -> VocabPlan:
    """`corpus_chars`: the characters the corpus is written in (`written_chars`); `prior`:
    token weights in the general language (`vocab_prior`), for the rows the corpus leaves."""
    spec = _tokenizer_json(tokenizer)
    rows = len(tokenizer)
    must = check_k(tokenizer, k, config_ids, spec)
    vocab = tokenizer.get_vocab()
    inverse = {i: p for p, i in vocab.items()}
    model = spec["model"]
    ranks = {pair: r for r, pair in enumerate(_merges(spec))} if model["type"] == "BPE" else {}
    keep = set(must)
    closure = 0

    def add(token: int, limit: int) -> None:
        nonlocal closure
        needed = {token}
        if ranks and len(inverse[token]) > 1:
            built_from = _derivation(inverse[token], ranks, vocab)
            if not built_from:
                return  # BPE never produces it: a row nobody could use
            needed |= {vocab[p] for p in built_from}
        new = needed - keep
        if len(keep) + len(new) <= limit:
            keep.update(new)
            closure += len(new) - 1

    by_corpus = [t for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    if model["type"] == "Unigram":
        by_tokenizer = sorted(range(len(model["vocab"])), key=lambda i: -model["vocab"][i][1])
    else:
        by_tokenizer = sorted(inverse)
    if not _byte_level(spec):  # byte-level pieces are spelled in a byte alphabet
        written = corpus_chars | {"▁", " "}
        by_tokenizer = [t for t in by_tokenizer if set(inverse[t]) <= written]
    by_language = [t for t, _ in sorted((prior or {}).items(), key=lambda kv: (-kv[1], kv[0]))]
    corpus_limit = len(must) + round(CORPUS_SHARE * (k - len(must)))
    orders = ((by_corpus, corpus_limit), (by_language, k), (by_tokenizer, k), (by_corpus, k))
    for order, limit in orders:
        for token in order:
            if len(keep) >= limit:
                break
            if token not in keep:
                add(token, limit)
    return VocabPlan(sorted(keep), rows, len(must), closure, len(counts))


def trimmed_tokenizer(tokenizer: Any, vocab_plan: VocabPlan) -> Any:
    """The same tokenizer over the kept tokens only, ids renumbered."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = _tokenizer_json(tokenizer)
    remap = vocab_plan.old_to_new
    model = spec["model"]
    if model["type"] == "BPE":
        pieces = {p: i for p, i in model["vocab"].items() if i in remap}
        model["vocab"] = {p: remap[i] for p, i in sorted(pieces.items(), key=lambda x: x[1])}
        kept = model["vocab"]
        model["merges"] = [
            [a, b] for a, b in _merges(spec) if a in kept and b in kept and a + b in kept
        ]
    else:
        model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in remap]
        if model.get("unk_id") is not None:
            model["unk_id"] = remap[model["unk_id"]]
    for added in spec["added_tokens"]:
        added["id"] = remap[added["id"]]
    _remap_ids(spec.get("post_processor"), remap)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        **{k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
    )
    fast.chat_template = tokenizer.chat_template
    fast.model_max_length = tokenizer.model_max_length
    return fast


def _remap_ids(node: Any, remap: dict[int, int]) -> None:
    """Post-processors name special tokens by id (TemplateProcessing's `ids`, Bert's and
    Roberta's `[token, id]` pairs)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                node[key] = [remap[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                node[key] = [value[0], remap[value[1]]]
            else:
                _remap_ids(value, remap)
    elif isinstance(node, list):
        for value in node:
            _remap_ids(value, remap)


_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
            "decoder_start_token_id")  # fmt: skip


def config_token_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    for cfg in (model.config, model.generation_config):
        for key in _ID_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, list):
                ids |= set(value)
            elif value is not None:
                ids.add(value)
    return ids


def trim_model(model: Any, vocab_plan: VocabPlan) -> None:
    """Slice the embedding (and an untied LM head) to the kept rows; renumber every token
    id the config and generation config name."""
    import torch

    keep = torch.tensor(vocab_plan.keep)
    remap = vocab_plan.old_to_new
    emb = model.get_input_embeddings()
    with torch.no_grad():
        emb.weight = torch.nn.Parameter(emb.weight[keep].clone())
    emb.num_embeddings = len(keep)
    if emb.padding_idx is not None:
        emb.padding_idx = remap.get(emb.padding_idx)
    head = model.get_output_embeddings()
    if getattr(model.config, "tie_word_embeddings", False):
        head.weight = emb.weight
    else:
        with torch.no_grad():
            head.weight = torch.nn.Parameter(head.weight[keep].clone())
    head.out_features = len(keep)
    model.config.vocab_size = len(keep)
    for cfg in (model.config, model.generation_config):
        for key in _ID_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, list):
                setattr(cfg, key, [remap[i] for i in value])
            elif value is not None:
                setattr(cfg, key, remap[value])
