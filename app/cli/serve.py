"""`sparsegate serve`: start the engines a deployment file spawns, then the gateway."""

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from app.cli.models import RegistryOpt, _home, _open, console
from app.errors import SparsegateError
from app.registry import is_shared

# Open streams get this long to finish when `serve` is told to stop; then they are cut, so
# that SIGTERM ends the gateway and its engines within seconds, not when the last stream ends.
_SHUTDOWN_GRACE_S = 3


def serve(
    config: Annotated[Path, typer.Option(help="Deployment file")] = Path("deploy/sparsegate.yaml"),
    host: Annotated[str, typer.Option(help="Gateway address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Gateway worker processes")] = 1,
    registry: RegistryOpt = None,
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request")] = True,
) -> None:
    """Serve the deployment's variants behind the OpenAI-compatible gateway."""
    import uvicorn

    from app.engines.supervisor import Supervisor
    from app.engines.vllm_process import EngineSettings
    from app.gateway.config import load_deployment, redis_url, resolve_production
    from app.gateway.logs import log_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per health check
    deployment = load_deployment(config)
    if deployment.gateway.open and not _loopback(host):
        raise SparsegateError(
            f"{config}: an open gateway (open: true) listens on this machine only, not on "
            f"{host}: give it API keys (sparsegate keys init) to serve other hosts"
        )
    spawned = {n: v for n, v in deployment.variants.items() if v.spawn is not None}
    reg = _open(registry) if spawned else None
    home = reg.home if reg else _registry_if_any(registry)
    if reg is None and home is not None and is_shared():
        # The workers read it for facts: an unreachable or missing shared registry is one
        # line here, not a traceback per worker.
        _open(registry).close()
    if deployment.gateway.tenant_keys and home is None:
        raise SparsegateError(f"{config}: tenant_keys: true reads the registry: give --registry")
    if deployment.gateway.tenant_keys and workers > 1 and not redis_url(deployment):
        logging.getLogger("sparsegate.gateway").warning(
            "tenant limits count in each of the %d workers apart (no gateway.limits.redis_url "
            "or SPARSEGATE_REDIS_URL): a key's rpm, tpm and max_inflight hold per worker",
            workers,
        )
    resolve_production(deployment, home)  # fail here, in one line, not in every worker
    # The workers build the app from these (uvicorn imports it in each process).
    os.environ["SPARSEGATE_DEPLOYMENT"] = str(config.resolve())
    if home is not None:
        os.environ["SPARSEGATE_GATEWAY_REGISTRY"] = str(home)
    metrics_dir = None
    if workers > 1:
        # Metrics from every worker, merged at /metrics (set before prometheus_client loads).
        metrics_dir = tempfile.mkdtemp(prefix="sparsegate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = None
    try:
        if spawned:
            settings = [
                EngineSettings(
                    model=reg.servable_path(name), served_name=name, **v.spawn.model_dump()
                )
                for name, v in spawned.items()
            ]
            supervisor = Supervisor(settings, reg.home / ".logs")
            console.print(f"starting {len(settings)} vLLM engine(s): {', '.join(spawned)}")
            # Inside the try: SIGTERM or Ctrl-C while engines start still stops them.
            supervisor.start()
        console.print(
            f"gateway on http://{host}:{port}/v1 (dashboard /dashboard, metrics /metrics, "
            f"{workers} worker(s))"
        )
        uvicorn.run(
            "app.gateway.app:app_from_env", factory=True, host=host, port=port,
            workers=workers, log_level="info", access_log=access_log,
            log_config=log_config(), timeout_graceful_shutdown=_SHUTDOWN_GRACE_S,
        )  # fmt: skip
    finally:
        if supervisor:
            supervisor.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _registry_if_any(registry: Path | None) -> Path | None:
    """The registry for the facts gauges, when there is one; url-only deployments need none."""
    from app.registry import registry_exists

    home = _home(registry)
    return home.resolve() if registry_exists(home) else None


def engine(
    variant: Annotated[str, typer.Argument(envvar="SPARSEGATE_VARIANT", help="Variant to serve")],
    host: Annotated[str, typer.Option(envvar="SPARSEGATE_ENGINE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SPARSEGATE_ENGINE_PORT")] = 8000,
    max_model_len: Annotated[int, typer.Option(envvar="SPARSEGATE_MAX_MODEL_LEN")] = 2048,
    kv_cache_gib: Annotated[
        int, typer.Option(envvar="VLLM_CPU_KVCACHE_SPACE", help="KV cache (CPU), GiB")
    ] = 2,
    attention_backend: Annotated[
        str | None, typer.Option(envvar="SPARSEGATE_ATTENTION_BACKEND", help="e.g. FLASH_ATTN")
    ] = None,
    compile: Annotated[bool, typer.Option(help="torch.compile (slower start, faster run)")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Run one vLLM engine for a registered variant (what engine containers run)."""
    from app.engines.vllm_process import EngineSettings

    folder = _open(registry).servable_path(variant)  # expands sparse-at-rest weights
    settings = EngineSettings(
        model=folder, served_name=variant, port=port, host=host, max_model_len=max_model_len,
        kv_cache_gib=kv_cache_gib, attention_backend=attention_backend, compile=compile,
    )  # fmt: skip
    console.print(f"serving {variant} from {folder} on {settings.url}")
    env = settings.environment(os.environ)  # the same as engines that serve spawns
    # Become the engine: signals (docker stop) reach vLLM directly.
    os.execve(settings.python, settings.command(), env)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
