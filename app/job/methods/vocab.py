"""Vocabulary trimming (`--trim-vocab K`): keep K rows of the embedding / LM head, chosen by
frequency in a mining corpus and then in ordinary English, with the tokenizer rewritten to
match (`app/job/trim_vocab.py`; the corpus: `app/job/vocab_corpus.py`; the English prior:
`app/job/vocab_prior.py`). Structured pruning of the part no other method touches: on
Gemma 3 270M, 168 M of 268 M parameters."""

from typing import Any

from app.errors import SparsegateError
from app.job.methods import Job, Method, Stage


class Vocab(Method):
    name = "vocab"
    stage = Stage.trim
    summary = "keep K vocabulary rows (embedding / LM head), tokenizer rewritten"

    def prepare(self, job: Job) -> None:
        """Everything about trimming that can be refused is refused before any work."""
        from app.job import trim_vocab, vocab_corpus

        if job.parent.quality.get("vocab"):
            raise SparsegateError(
                f"{job.parent.name} is already vocabulary-trimmed; trim its parent instead"
            )
        trim_vocab.check_k(
            job.tokenizer, self.recipe.trim_vocab, trim_vocab.config_token_ids(job.model)
        )
        corpus = (
            vocab_corpus.read_corpus(self.recipe.vocab_corpus)
            if self.recipe.vocab_corpus
            else vocab_corpus.default_corpus()
        )
        vocab_corpus.check_disjoint(corpus)
        job.extra["corpus"] = corpus

    def apply(self, job: Job, target: float | None = None) -> dict[str, Any] | None:
        from app.job import trim_vocab, vocab_prior
        from app.texts.evaluation import EVAL_TEXTS

        k = self.recipe.trim_vocab
        corpus = job.extra["corpus"]
        n_chunks = -(-len(corpus.text) // trim_vocab.MINE_CHUNK)
        with job.steps.step(
            f"Counting tokens in {corpus.n_bytes / 1e6:.0f} MB", total=n_chunks
        ) as advance:
            counts = trim_vocab.mine(job.tokenizer, corpus.text, lambda n: advance(n))
        with job.steps.step("Weighing tokens by English word frequency"):
            prior = vocab_prior.english_prior(job.tokenizer)
        with job.steps.step(f"Trimming the vocabulary to {k} tokens"):
            plan = trim_vocab.plan(
                job.tokenizer, counts, k, trim_vocab.config_token_ids(job.model),
                trim_vocab.written_chars(corpus.text), prior.weights,
            )  # fmt: skip
            trimmed = trim_vocab.trimmed_tokenizer(job.tokenizer, plan)
            trim_vocab.trim_model(job.model, plan)
            texts = {
                t.key: text_figures(job.tokenizer, trimmed, plan, "\n\n".join(t.documents()))
                for t in EVAL_TEXTS
            }
        job.tokenizer = trimmed
        return {"k": k, **plan.as_dict(), "corpus": corpus.as_dict(),
                "corpus_share": trim_vocab.CORPUS_SHARE, "prior": prior.as_dict(),
                "texts": texts}  # fmt: skip


def text_figures(original: Any, trimmed: Any, plan: Any, text: str) -> dict[str, Any]:
    """How the trimmed tokenizer reads an evaluation text. It must read it back whole
    wherever the original does: a token it cannot spell becomes `<unk>`, one cheap token
    for any run of text, which would flatter bits per byte."""
    before = original(text, add_special_tokens=False)["input_ids"]
    after = trimmed(text, add_special_tokens=False)["input_ids"]
    unk = trimmed.unk_token_id
    figures = {
        "coverage": sum(i in plan.old_to_new for i in before) / len(before),
        "tokens_per_byte_ratio": len(after) / len(before),
        "unk_tokens": after.count(unk) if unk is not None else 0,
    }
    if original.decode(before) == text and trimmed.decode(after) != text:
        raise SparsegateError(
            f"the trimmed tokenizer does not read the evaluation text back whole "
            f"({figures['unk_tokens']} <unk> tokens): its bits per byte would be flattered; "
            "keep more rows (--trim-vocab) or use a tokenizer with byte fallback"
        )
    return figures
