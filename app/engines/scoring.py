"""Quality as served: ask the engine for the log-probability of every prompt token."""

import httpx

from app.texts.bpb import bits_per_byte


def served_nll(url: str, model: str, sequences: list[list[int]], timeout: float = 300) -> float:
    """Total negative log-likelihood (nats) of every token after the first."""
    nll = 0.0
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for ids in sequences:
            r = client.post(
                "/v1/completions",
                json={"model": model, "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0},
            )
            r.raise_for_status()
            scored = r.json()["choices"][0]["prompt_logprobs"][1:]  # first token has none
            for token, entry in zip(ids[1:], scored, strict=True):
                nll -= entry[str(token)]["logprob"]
    return nll


def served_bits_per_byte(url: str, model: str, folder, spans: list[str]) -> float:
    """Bits per byte of text spans as the job scores them (`app.texts.evaluation.encode_spans`
    with the variant's own tokenizer), from the engine's prompt log-probabilities."""
    from transformers import AutoTokenizer

    from app.texts.evaluation import encode_spans

    tokenizer = AutoTokenizer.from_pretrained(folder)
    nll = served_nll(url, model, encode_spans(tokenizer, spans))
    return bits_per_byte(nll, sum(len(s.encode()) for s in spans))
