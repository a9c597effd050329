"""vLLM engines: start, watch and stop one OpenAI-compatible vLLM server per variant."""
