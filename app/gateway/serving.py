"""The gateway's serving logic: pick a variant, forward, fall back, account."""

import asyncio
import json
import time

import httpx
from fastapi.responses import Response, StreamingResponse

from app.gateway.config import Deployment
from app.gateway.errors import GatewayError
from app.gateway.protocol import CompletionLike
from app.gateway.routing import Router
from app.gateway.upstream import (
    Engine,
    EngineUnavailable,
    Timings,
    relay_sse,
    send,
)

PIN_HEADER = "x-sparsegate-variant"
USER_HEADER = "x-sparsegate-user"


class Gateway:
    def __init__(self, deployment: Deployment, router: Router | None = None) -> None:
        self.deployment = deployment
        self.router = router or Router(deployment)
        timeout = httpx.Timeout(deployment.gateway.request_timeout_s, connect=5.0)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.engines = {
            name: Engine(
                name, cfg, httpx.AsyncClient(base_url=cfg.base_url, timeout=timeout, limits=limits)
            )
            for name, cfg in deployment.variants.items()
        }

    async def close(self) -> None:
        await asyncio.gather(*(e.client.aclose() for e in self.engines.values()))

    async def ready(self) -> dict[str, bool]:
        states = await asyncio.gather(*(e.ready() for e in self.engines.values()))
        return dict(zip(self.engines, states, strict=True))

    def models(self) -> list[dict]:
        created = int(time.time())
        entries = [{"id": n, "object": "model", "created": created, "owned_by": "sparsegate"}
                   for n in self.deployment.variants]  # fmt: skip
        entries += [
            {"id": alias, "object": "model", "created": created, "owned_by": "sparsegate",
             "variants": list(cfg.split)}
            for alias, cfg in self.deployment.aliases.items()
        ]  # fmt: skip
        return entries

    async def handle(self, path: str, request: CompletionLike, body: dict, headers) -> Response:
        cap = self.deployment.gateway.max_tokens_cap
        for key in ("max_tokens", "max_completion_tokens"):
            if (getattr(request, key) or 0) > cap:
                raise GatewayError(
                    400, f"{key} {getattr(request, key)} is over the cap {cap}", param=key
                )
        user = request.user or headers.get(USER_HEADER)
        candidates = self.router.candidates(request.model, user, headers.get(PIN_HEADER))
        busy = False
        for attempt, name in enumerate(candidates):
            engine = self.engines[name]
            if engine.inflight >= engine.config.max_inflight:
                busy = True
                continue
            upstream = {**body, "model": engine.config.served_name or name}
            if request.stream:
                # Always ask for usage, so accounting is exact for streams too.
                upstream["stream_options"] = {
                    **(body.get("stream_options") or {}),
                    "include_usage": True,
                }
            timings = Timings()
            engine.inflight += 1
            try:
                response = await send(engine, path, upstream, stream=request.stream)
            except EngineUnavailable:
                engine.inflight -= 1
                continue
            except BaseException:
                engine.inflight -= 1
                raise
            meta = {"x-sparsegate-variant": name, "x-sparsegate-fallbacks": str(attempt)}
            if request.stream:
                return self._stream(engine, response, request, timings, meta)
            engine.inflight -= 1
            timings.end = time.perf_counter()
            return Response(
                response.content,
                status_code=response.status_code,
                media_type="application/json",
                headers={**meta, **timings.headers(), **_usage_headers(response)},
            )
        if busy:
            raise GatewayError(
                429, f"all engines for {request.model!r} are at capacity; retry shortly",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        raise GatewayError(503, f"no engine ready for {request.model!r}")

    def _stream(self, engine, response, request, timings, meta) -> Response:
        if response.status_code != 200:  # an engine's own error passes through

            async def error_body():
                try:
                    yield await response.aread()
                finally:
                    engine.inflight -= 1
                    await response.aclose()

            return StreamingResponse(error_body(), status_code=response.status_code,
                                     media_type="application/json", headers=meta)  # fmt: skip
        wants_usage = bool(request.stream_options and request.stream_options.include_usage)
        usage: dict = {}

        async def events():
            try:
                async for chunk in relay_sse(
                    response, client_wants_usage=wants_usage, timings=timings, usage=usage
                ):
                    yield chunk
            finally:
                engine.inflight -= 1

        return StreamingResponse(events(), media_type="text/event-stream", headers=meta)


def _usage_headers(response: httpx.Response) -> dict[str, str]:
    try:
        usage = json.loads(response.content).get("usage") or {}
    except (ValueError, AttributeError):
        return {}
    return {
        "x-sparsegate-prompt-tokens": str(usage.get("prompt_tokens", "")),
        "x-sparsegate-completion-tokens": str(usage.get("completion_tokens", "")),
    }
