"""Forwarding to vLLM engines: one pooled HTTP client per engine, usage on every stream."""

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from app.gateway.config import VariantConfig
from app.gateway.errors import GatewayError
from app.metrics import definitions as m
from app.metrics.cost import SharingClock


class EngineUnavailable(Exception):
    """The engine failed before sending a byte: the request may go to a fallback."""


class StreamTimeout(Exception):
    """The engine stopped sending mid-stream for longer than the request timeout."""


@dataclass
class Engine:
    name: str
    config: VariantConfig
    client: httpx.AsyncClient
    inflight: int = 0
    clock: SharingClock = field(default_factory=SharingClock)

    def __post_init__(self) -> None:
        m.PRICE.labels(self.name).set(self.config.price_per_hour)

    def enter(self) -> float:
        self.inflight += 1
        m.INFLIGHT.labels(self.name).inc()
        return self.clock.enter()

    def leave(self, mark: float) -> float:
        """Returns the request's share of this engine's busy seconds."""
        self.inflight -= 1
        m.INFLIGHT.labels(self.name).dec()
        return self.clock.leave(mark)

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
    token_events: list[float] = field(default_factory=list)

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
        raise GatewayError(504, f"engine {engine.name} did not answer in time") from e
    except httpx.HTTPError as e:
        raise EngineUnavailable(str(e)) from e
    if response.status_code >= 500:
        await response.aclose()
        raise EngineUnavailable(f"engine {engine.name} answered {response.status_code}")
    return response


def event_text(event: dict) -> str:
    """The generated text an event (or a whole response) carries for choice 0."""
    for choice in event.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        if "text" in choice:
            return choice["text"] or ""
        part = choice.get("delta") or choice.get("message") or {}
        return part.get("content") or ""
    return ""


_USAGE = re.compile(rb'"usage":\s*\{')
_NO_CHOICES = re.compile(rb'"choices":\s*\[\s*\]')
_DONE = b"data: [DONE]"


async def relay_sse(
    response: httpx.Response,
    *,
    client_wants_usage: bool,
    timings: Timings,
    usage: dict,
    text: list[str] | None,
) -> AsyncIterator[bytes]:
    """Pass the engine's SSE events through, recording usage, token times and (when `text`
    is a list, for shadow comparison) the text; drop the usage-only event the gateway asked
    for when the client did not. The caller owns the response and closes it (the client
    leaving closes the engine connection, and vLLM aborts the request).

    Per event this costs two byte searches: JSON is parsed only for the usage event (and for
    the text when a shadow copy needs it), and everything one network read brings is sent on
    in one write."""
    pending = b""
    try:
        async for chunk in response.aiter_bytes():
            pending += chunk
            *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
            out = []
            for event in events:
                event = event.strip()
                if not event.startswith(b"data: "):
                    continue
                if event == _DONE:
                    out.append(_DONE + b"\n\n")
                    continue
                has_choices = _NO_CHOICES.search(event) is None
                if has_choices:
                    now = time.perf_counter()
                    if timings.first_token is None:
                        timings.first_token = now
                    timings.token_events.append(now)
                has_usage = _USAGE.search(event) is not None
                if has_usage or (has_choices and text is not None):
                    data = json.loads(event[6:])
                    if has_choices and text is not None:
                        text.append(event_text(data))
                    if has_usage:
                        usage.update(data["usage"])
                        if not client_wants_usage:
                            if not has_choices:
                                continue  # the usage-only event the gateway asked for
                            data["usage"] = None
                            event = b"data: " + json.dumps(data).encode()
                out.append(event + b"\n\n")
            if out:
                yield b"".join(out)
    except httpx.TimeoutException as e:
        raise StreamTimeout(str(e)) from e
    finally:
        timings.end = time.perf_counter()
