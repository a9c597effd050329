"""`sparsegate serve`: start the engines a deployment file spawns, then the gateway."""

import logging
from pathlib import Path
from typing import Annotated

import typer

from app.cli.models import RegistryOpt, _open, console


def serve(
    config: Annotated[Path, typer.Option(help="Deployment file")] = Path("deploy/sparsegate.yaml"),
    host: Annotated[str, typer.Option(help="Gateway address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port")] = 8080,
    registry: RegistryOpt = None,
) -> None:
    """Serve the deployment's variants behind the OpenAI-compatible gateway."""
    import uvicorn

    from app.engines.supervisor import Supervisor
    from app.engines.vllm_process import EngineSettings
    from app.gateway.app import create_app
    from app.gateway.config import load_deployment

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    deployment = load_deployment(config)
    spawned = {n: v for n, v in deployment.variants.items() if v.spawn is not None}
    supervisor = None
    if spawned:
        reg = _open(registry)
        settings = [
            EngineSettings(model=reg.servable_path(name), served_name=name, **v.spawn.model_dump())
            for name, v in spawned.items()
        ]
        supervisor = Supervisor(settings, reg.home / ".logs")
        console.print(f"starting {len(settings)} vLLM engine(s): {', '.join(spawned)}")
        supervisor.start()
    try:
        uvicorn.run(create_app(deployment), host=host, port=port, log_level="info")
    finally:
        if supervisor:
            supervisor.stop()
