"""Forwarding to vLLM engines: one pooled HTTP client per engine, usage on every stream."""

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from app.gateway.config import VariantConfig
from app.gateway.errors import GatewayError


class EngineUnavailable(Exception):
    """The engine failed before sending a byte: the request may go to a fallback."""


@dataclass
class Engine:
    name: str
    config: VariantConfig
    client: httpx.AsyncClient
    inflight: int = 0

    async def ready(self) -> bool:
        try:
            return (await self.client.get("/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Timings:
    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    end: float | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.first_token is not None:
            out["x-sparsegate-ttft-ms"] = f"{(self.first_token - self.start) * 1000:.1f}"
        if self.end is not None:
            out["x-sparsegate-latency-ms"] = f"{(self.end - self.start) * 1000:.1f}"
        return out


async def send(engine: Engine, path: str, body: dict, *, stream: bool) -> httpx.Response:
    """POST to the engine; with `stream`, return once it has answered with headers.

    Raises EngineUnavailable when it failed before any byte (the caller may fall back)."""
    request = engine.client.build_request("POST", path, json=body)
    try:
        response = await engine.client.send(request, stream=stream)
    except httpx.TimeoutException as e:
        raise GatewayError(504, f"engine {engine.name} timed out") from e
    except httpx.HTTPError as e:
        raise EngineUnavailable(str(e)) from e
    if response.status_code >= 500:
        await response.aclose()
        raise EngineUnavailable(f"engine {engine.name} answered {response.status_code}")
    return response


async def relay_sse(
    response: httpx.Response, *, client_wants_usage: bool, timings: Timings, usage: dict
) -> AsyncIterator[bytes]:
    """Pass the engine's SSE events through, recording usage; drop the usage-only event
    the gateway asked for when the client did not. Closing it aborts the engine request."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data.strip() == "[DONE]":
                yield b"data: [DONE]\n\n"
                continue
            event = json.loads(data)
            if timings.first_token is None and event.get("choices"):
                timings.first_token = time.perf_counter()
            if event.get("usage"):
                usage.update(event["usage"])
                if not event.get("choices") and not client_wants_usage:
                    continue
                if not client_wants_usage:
                    event["usage"] = None
                    data = json.dumps(event)
            yield f"data: {data}\n\n".encode()
    finally:
        timings.end = time.perf_counter()
        await response.aclose()
