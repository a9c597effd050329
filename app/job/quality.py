"""Quality figures of a variant against its dense base, on the same bytes.

Every evaluation text (`app.texts.evaluation`: in domain and out of domain) is cut into the
same spans for every model; each model reads them with its own tokenizer. Bits per byte
compare any two variants; per-token perplexity only variants that share a tokenizer, so
its ratio is left out where the vocabulary was trimmed in the lineage. A reference model's
scores are cached in its registry record under the evaluation's key.
"""

import hashlib
from typing import Any

from app.registry import Registry
from app.texts.evaluation import EVAL_TEXTS, PYDOC, SPAN_CHARS


class Evaluation:
    def __init__(self, registry: Registry, n_spans: int) -> None:
        self.registry = registry
        self.n_spans = n_spans
        self.spans = {t.key: t.spans(n_spans) for t in EVAL_TEXTS}

    def key(self, text: str) -> str:
        """The cache key of a text's scores: its spans' sha256 too, since the same name can
        hold other text (pydoc_data changes with the Python version) on a shared registry."""
        digest = hashlib.sha256("\0".join(self.spans[text]).encode()).hexdigest()[:16]
        return f"{text}/{self.n_spans}x{SPAN_CHARS}/{digest}"

    def describe(self) -> dict[str, Any]:
        return {
            "texts": {t.key: {"title": t.title, "domain": t.domain} for t in EVAL_TEXTS},
            "spans": self.n_spans,
            "span_chars": SPAN_CHARS,
            "bytes": {k: sum(len(s.encode()) for s in v) for k, v in self.spans.items()},
            "keys": {k: self.key(k) for k in self.spans},
        }

    def score(self, model: Any, tokenizer: Any, steps: Any, label: str) -> dict[str, dict]:
        from app.job.evaluate import score_spans

        out = {}
        for key, spans in self.spans.items():
            with steps.step(f"Evaluating {label} ({key})", total=len(spans)) as advance:
                out[key] = score_spans(model, tokenizer, spans, advance).as_dict()
        return out

    def reference(self, name: str, model: Any, tokenizer: Any, steps: Any) -> dict[str, dict]:
        """A registered model's scores on these spans: cached, else measured (loading the
        model when none is given) and stored in its record."""
        record = self.registry.get(name)
        cached = record.quality.get("scores_by_eval", {})
        if all(self.key(k) in cached for k in self.spans):
            return {k: cached[self.key(k)] for k in self.spans}
        if model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with steps.step(f"Loading {name}"):
                folder = self.registry.servable_path(name)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        scores = self.score(model, tokenizer, steps, name)
        known = {**cached, **{self.key(k): v for k, v in scores.items()}}
        self.registry.update_quality(name, {"scores_by_eval": known})
        return scores

    @staticmethod
    def figures(
        scores: dict[str, dict], dense: dict[str, dict], *, same_tokenizer: bool
    ) -> dict[str, Any]:
        bpb_ratio = {k: scores[k]["bpb"] / dense[k]["bpb"] for k in scores}
        ppl, ppl_dense = scores[PYDOC.key]["ppl"], dense[PYDOC.key]["ppl"]
        return {
            "bpb": {k: v["bpb"] for k, v in scores.items()},
            "bpb_dense": {k: v["bpb"] for k, v in dense.items()},
            "bpb_ratio": bpb_ratio,
            # The promotion gate's figure: the worse of in and out of domain.
            "bpb_ratio_max": max(bpb_ratio.values()),
            "ppl": ppl,
            "ppl_dense": ppl_dense,
            "ppl_ratio": ppl / ppl_dense if same_tokenizer else None,
        }
