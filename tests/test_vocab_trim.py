"""Vocabulary trimming on the tiny model (byte-level BPE), and on a Unigram tokenizer: the
trimmed tokenizer's guarantees, the rewritten checkpoint, and bad input."""

import json
import random
import re
import sysconfig
from pathlib import Path

import pytest

from app.registry.embedded import EmbeddedRegistry
from app.texts.evaluation import EVAL_TEXTS
from tests.conftest import run_cli

K = 600  # of the tiny model's 1024 tokens; 4 special + 256 byte-level characters must stay
FAST = ["--calibration-samples", "4", "--eval-windows", "2"]


# The tiny job mines the standard library's email package (0.4 MB), as a user's corpus:
# the default corpus (96 MB, a minute or more of counting) is mined by test_compress's
# trimmed Gemma job, which checks what its record says of it.
CORPUS = Path(sysconfig.get_paths()["stdlib"]) / "email"


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("trim-registry")
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("compress", "tiny", "--trim-vocab", str(K), "--vocab-corpus", str(CORPUS),
                   *FAST, "--name", "tiny-t", registry=home)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "vocabulary 600 rows" in proc.stdout
    return home


def _tokenizers(home):
    from transformers import AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(home / "tiny"),
        AutoTokenizer.from_pretrained(home / "tiny-t"),
    )


def _remap(before, after) -> dict[int, int]:
    """Old id -> new id, through the token strings (the plan renumbers in old order)."""
    b, a = before.get_vocab(), after.get_vocab()
    return {i: a[p] for p, i in b.items() if p in a}


def test_checkpoint_and_record_agree_on_k_rows(trimmed):
    from safetensors.torch import load_file

    v = EmbeddedRegistry(trimmed).get("tiny-t")
    config = json.loads((trimmed / "tiny-t" / "config.json").read_text())
    weights = load_file(EmbeddedRegistry(trimmed).servable_path("tiny-t") / "model.safetensors")
    _, after = _tokenizers(trimmed)
    assert config["vocab_size"] == len(after) == K
    assert weights["model.embed_tokens.weight"].shape[0] == K
    assert weights["lm_head.weight"].shape[0] == K  # the tiny model's head is not tied
    vocab = v.quality["vocab"]
    assert vocab["k"] == K and vocab["rows_kept"] == K and vocab["rows_before"] == 1024
    corpus = vocab["corpus"]
    assert corpus["source"] == str(CORPUS) and corpus["files"] > 10
    assert corpus["bytes"] > 100_000 and len(corpus["sha256"]) == 64
    for text in ("pydoc", "news"):
        assert 0 < vocab["texts"][text]["coverage"] < 1
        assert vocab["texts"][text]["tokens_per_byte_ratio"] > 1  # fewer tokens, more pieces
    # Bits per byte compare across tokenizers; per-token perplexity does not.
    assert v.quality["ppl_ratio"] is None
    assert set(v.quality["bpb_ratio"]) == {"pydoc", "news"}
    assert v.quality["bpb_ratio_max"] == max(v.quality["bpb_ratio"].values())
    # Special-token ids follow the renumbering.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert config[key] == getattr(after, key.removesuffix("_id") + "_id") < K


def _random_unicode(rng: random.Random, n: int) -> str:
    pools = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4F00),
             (0x1F600, 0x1F64F), (0x0A, 0x0A)]  # fmt: skip
    return "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(n))


def test_trimmed_tokenizer_never_emits_a_removed_id_and_round_trips(trimmed):
    before, after = _tokenizers(trimmed)
    rng = random.Random(7)
    words = " ".join(t.documents()[0] for t in EVAL_TEXTS).split()
    samples = [_random_unicode(rng, rng.randint(1, 300)) for _ in range(300)]
    samples += [" ".join(rng.choices(words, k=50)) for _ in range(100)]  # kept and not
    samples += ["\n\n".join(t.documents()) for t in EVAL_TEXTS]
    round_trips = 0
    for text in samples:
        ids = after(text, add_special_tokens=False)["input_ids"]
        assert max(ids) < K
        # Whatever the original tokenizer can write back (the tiny one has no byte
        # fallback for characters its training text lacked), the trimmed one can too.
        if before.decode(before(text, add_special_tokens=False)["input_ids"]) == text:
            assert after.decode(ids) == text
            round_trips += 1
    assert round_trips >= 100


def test_text_of_kept_tokens_tokenizes_exactly_as_before(trimmed):
    before, after = _tokenizers(trimmed)
    remap = _remap(before, after)
    for t in EVAL_TEXTS:
        # Words (letters only, so every tokenizer sees " word" as one pre-token) whose
        # original tokens all survived.
        words = re.findall(r"[A-Za-z]+", "\n\n".join(t.documents()))
        kept = [w for w in words if all(i in remap for i in before(" " + w)["input_ids"])]
        assert len(kept) > len(words) // 10  # a real test: plenty of words qualify
        text = " " + " ".join(kept)
        old = before(text, add_special_tokens=False)["input_ids"]
        assert after(text, add_special_tokens=False)["input_ids"] == [remap[i] for i in old]


def test_same_corpus_same_vocabulary(trimmed, tmp_path):
    # The same inputs give the same tokenizer, byte for byte (a user's corpus here, so the
    # second job is quick): mining and the plan have no randomness.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("def parse(value):\n    return value.strip()\n" * 200)
    (corpus / "b.md").write_text("The parser returns a stripped value.\n" * 200)
    outputs = []
    for name in ("tiny-c1", "tiny-c2"):
        proc = run_cli(
            "compress", "tiny", "--trim-vocab", "400", "--vocab-corpus", str(corpus), *FAST,
            "--name", name, registry=trimmed,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        outputs.append((trimmed / name / "tokenizer.json").read_bytes())
        assert EmbeddedRegistry(trimmed).get(name).quality["vocab"]["corpus"]["files"] == 2
    assert outputs[0] == outputs[1]


def test_english_prior_fills_the_rows_a_code_corpus_leaves(tiny_model_dir):
    # Mined on code alone, a trimmed vocabulary splits ordinary English words; the rows the
    # corpus does not claim go to tokens of frequent English words instead, so news prose
    # (never seen here) costs fewer tokens at the same K, and the prior is reproducible.
    from transformers import AutoTokenizer

    from app.job import trim_vocab, vocab_prior

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n".join(p.read_text() for p in sorted((stdlib / "json").glob("*.py")))
    counts, chars = trim_vocab.mine(tok, code), trim_vocab.written_chars(code)
    prior, again = vocab_prior.english_prior(tok), vocab_prior.english_prior(tok)
    assert prior.sha256 == again.sha256
    assert prior.weights == again.weights
    news = "\n\n".join(next(t for t in EVAL_TEXTS if t.key == "news").documents())
    sizes = {}
    for label, weights in (("corpus only", None), ("with prior", prior.weights)):
        plan = trim_vocab.plan(tok, counts, K, set(), chars, weights)
        assert len(plan.keep) == K
        small = trim_vocab.trimmed_tokenizer(tok, plan)
        sizes[label] = len(small(news, add_special_tokens=False)["input_ids"])
    assert sizes["with prior"] < 0.97 * sizes["corpus only"], sizes


def test_unigram_tokenizers_trim_too():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from app.job import trim_vocab
    from app.texts.corpus import pydoc_texts

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=800, special_tokens=["<unk>", "<s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(pydoc_texts("calibration"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    text = "\n".join(pydoc_texts("calibration"))
    counts = trim_vocab.mine(fast, text)
    plan = trim_vocab.plan(fast, counts, 300, set(), trim_vocab.written_chars(text))
    small = trim_vocab.trimmed_tokenizer(fast, plan)
    assert len(small) == 300
    for t in EVAL_TEXTS:
        ids = small("\n".join(t.documents()[:5]), add_special_tokens=False)["input_ids"]
        assert max(ids) < 300


def test_tokenizers_of_other_kinds_are_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from app.errors import SparsegateError
    from app.job import trim_vocab

    word_level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>")
    with pytest.raises(SparsegateError, match="cannot trim a WordLevel tokenizer"):
        trim_vocab.check_k(fast, 2, set())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trim-vocab", "100"], "tokens that must be kept"),
        (["--trim-vocab", "5000"], "above the vocabulary's 1024 tokens"),
        (["--trim-vocab", "0"], "--trim-vocab must be a number of tokens"),
        (["--trim-vocab", "600", "--vocab-corpus", "/no/such/folder"], "not found"),
        (["--vocab-corpus", "CORPUS", "--prune", "magnitude"], "--vocab-corpus needs --trim-vocab"),
        (["--trim-vocab", "600", "--vocab-corpus", "EMPTY"], "has no text"),
        (["--trim-vocab", "600", "--vocab-corpus", "LEAK_PYDOC"], "contains the pydoc evaluation"),
        (["--trim-vocab", "600", "--vocab-corpus", "LEAK_NEWS"], "contains the news evaluation"),
    ],
)
def test_bad_input_is_one_line_and_registers_nothing(trimmed, tmp_path, args, message):
    from app.texts.evaluation import NEWS, PYDOC

    files = {
        "CORPUS": "some text " * 100,
        "EMPTY": "  \n",
        "LEAK_PYDOC": "my text\n" + PYDOC.documents()[3],
        "LEAK_NEWS": "my text\n" + NEWS.documents()[42] + "\nmore",
    }
    args = list(args)
    for i, arg in enumerate(args):
        if arg in files:
            path = tmp_path / f"{arg}.txt"
            path.write_text(files[arg])
            args[i] = str(path)
    before = {v.name for v in EmbeddedRegistry(trimmed).variants()}
    proc = run_cli("compress", "tiny", *args, "--name", "bad", registry=trimmed)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert {v.name for v in EmbeddedRegistry(trimmed).variants()} == before


def test_a_trimmed_variant_is_not_trimmed_again(trimmed):
    proc = run_cli("compress", "tiny-t", "--trim-vocab", "500", *FAST, registry=trimmed)
    assert proc.returncode == 2 and "already vocabulary-trimmed" in proc.stderr


def test_a_trimmed_tokenizer_that_cannot_read_the_text_back_is_refused(tiny_model_dir):
    """`<unk>` would stand for any run of text at the price of one token: the report counts
    it, and a tokenizer that loses text the original kept is refused."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from app.errors import SparsegateError
    from app.job.methods.vocab import text_figures

    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    plan = SimpleNamespace(old_to_new={i: i for i in range(len(original))})
    text = "The quick brown fox jumps over the lazy dog."
    same = text_figures(original, original, plan, text)
    assert same["unk_tokens"] == 0 and same["tokens_per_byte_ratio"] == 1.0
    words = Tokenizer(models.WordLevel({"<unk>": 0, "The": 1, "the": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    lossy = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    with pytest.raises(SparsegateError, match=r"does not read the evaluation text back whole \(7"):
        text_figures(original, lossy, plan, text)


@pytest.mark.parametrize("key", ["pydoc", "news"])
def test_an_evaluation_text_anywhere_in_a_corpus_is_found(key):
    """Mid-line, across lines, or after short lines: the disjointness check searches only
    lines as long as a probe for probes without a line break, and must miss none."""
    from app.errors import SparsegateError
    from app.job.vocab_corpus import MiningCorpus, check_disjoint
    from app.texts.evaluation import EVAL_TEXTS

    text = {t.key: t for t in EVAL_TEXTS}[key]
    for doc in text.documents()[:40]:
        for wrap in ("prefix {} suffix", "a\nb\n{}", "short\n" * 3 + "x = '{}'\nend"):
            with pytest.raises(SparsegateError, match=f"contains the {key} evaluation"):
                check_disjoint(MiningCorpus(wrap.format(doc), "test", 1))
    check_disjoint(MiningCorpus("prefix " + text.documents()[0][:100] + " suffix", "test", 1))
