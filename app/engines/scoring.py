"""Perplexity as served: ask the engine for the log-probability of every prompt token."""

import math

import httpx


def served_perplexity(
    url: str, model: str, windows: list[list[int]], timeout: float = 300
) -> float:
    nll = 0.0
    count = 0
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for window in windows:
            r = client.post(
                "/v1/completions",
                json={"model": model, "prompt": window, "max_tokens": 1, "prompt_logprobs": 0},
            )
            r.raise_for_status()
            scored = r.json()["choices"][0]["prompt_logprobs"][1:]  # first token has none
            for token, entry in zip(window[1:], scored, strict=True):
                nll -= entry[str(token)]["logprob"]
                count += 1
    return math.exp(nll / count)
