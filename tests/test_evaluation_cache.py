"""The reference model's scores are cached in its registry record: keyed by the text itself,
so a variant and its dense base are never compared on different text."""

from app.job.quality import Evaluation
from app.registry.embedded import EmbeddedRegistry


def test_cached_scores_are_used_only_for_the_same_text(tmp_path):
    reg = EmbeddedRegistry(tmp_path, create=True)
    with reg.draft("dense") as draft:
        (draft.path / "config.json").write_text("{}")
        draft.publish()
    here = Evaluation(reg, 2)
    measured: list[str] = []

    def score(evaluation: Evaluation, label: str) -> dict:
        def run(model, tokenizer, steps, _label):
            measured.append(label)
            return {k: {"bpb": len(v[0]) / 1000, "ppl": 2.0} for k, v in evaluation.spans.items()}

        return run

    here.score = score(here, "here")
    first = here.reference("dense", object(), None, None)
    assert measured == ["here"]
    assert here.reference("dense", object(), None, None) == first and measured == ["here"]
    # Another host's Python ships other pydoc text under the same name and span count.
    there = Evaluation(reg, 2)
    there.spans = {**there.spans, "pydoc": [s[::-1] for s in there.spans["pydoc"]]}
    there.score = score(there, "there")
    assert there.key("pydoc") != here.key("pydoc") and there.key("news") == here.key("news")
    there.reference("dense", object(), None, None)
    assert measured == ["here", "there"]  # measured again, not read from the other's cache
    cached = reg.get("dense").quality["scores_by_eval"]
    assert set(cached) == {here.key("pydoc"), here.key("news"), there.key("pydoc")}
