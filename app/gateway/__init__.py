"""The OpenAI-compatible gateway. Light by design: never imports torch or vLLM."""
