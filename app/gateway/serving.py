"""The gateway's serving logic: pick a variant, forward, fall back, account, shadow."""

import asyncio
import json
import logging
import time

import aiohttp
from fastapi.responses import Response, StreamingResponse

from app.gateway import accounting as acc
from app.gateway.config import Deployment
from app.gateway.cost_probes import CostProbes
from app.gateway.errors import GatewayError
from app.gateway.protocol import CompletionLike
from app.gateway.quality import QualitySampler
from app.gateway.routing import Router
from app.gateway.shadow import ShadowRunner
from app.gateway.upstream import (
    Engine,
    EngineUnavailable,
    StreamBroken,
    StreamTimeout,
    Timings,
    event_text,
    relay_sse,
    send,
    text_bytes,
)
from app.metrics import definitions as m

log = logging.getLogger("sparsegate.gateway")

PIN_HEADER = "x-sparsegate-variant"
# Outcomes a rollout's error gate counts: the client's own mistakes (4xx) and departures
# say nothing of the variant.
_COUNTED = (acc.OK, acc.ENGINE_ERROR, acc.TIMEOUT)
USER_HEADER = "x-sparsegate-user"


class Gateway:
    def __init__(self, deployment: Deployment, router: Router | None = None) -> None:
        self.deployment = deployment
        self.router = router or Router(deployment)
        self.shadow = ShadowRunner(
            [(a, c.shadow.variant) for a, c in deployment.aliases.items() if c.shadow]
        )
        self.engines = {
            name: Engine(name, cfg, cfg.request_timeout_s or deployment.gateway.request_timeout_s)
            for name, cfg in deployment.variants.items()
        }
        self.quality = QualitySampler(deployment, self.engines)
        self.probes = CostProbes(self.engines, deployment.gateway.cost_probe_every)
        self._evidence = None  # a live rollout's evidence (app/gateway/rollout_sync.py)

    @property
    def evidence(self):
        return self._evidence

    @evidence.setter
    def evidence(self, book) -> None:
        self._evidence = self.shadow.evidence = self.quality.evidence = book

    def retarget(self, aliases: dict) -> None:
        """Route the aliases anew (a rollout moved): requests already routed finish where
        they are."""
        if aliases == self.deployment.aliases:
            return
        self.deployment = self.deployment.model_copy(update={"aliases": aliases})
        self.router.deployment = self.deployment
        self.quality.retarget(self.deployment)

    async def close(self) -> None:
        await asyncio.gather(self.shadow.drain(), self.quality.drain(), self.probes.drain())
        await asyncio.gather(*(e.close() for e in self.engines.values()))

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

    async def handle(
        self, route: str, request: CompletionLike, body: dict, headers, on_done=None
    ) -> Response:
        """`on_done(variant, outcome, usage, output_bytes)`: called once when the request
        ends, if it reached an engine (a tenant's books)."""
        alias = request.model if request.model in self.deployment.aliases else ""
        candidates: list[str] = []
        try:
            body = self._bounded(request, body)
            user = request.user or headers.get(USER_HEADER)
            candidates = self.router.candidates(request.model, user, headers.get(PIN_HEADER))
            return await self._forward(route, request, body, alias, candidates, on_done)
        except GatewayError as e:
            e.alias = alias
            # A refusal belongs to the variant first chosen (429/503 after every candidate),
            # or, refused before routing, to the variant the request named.
            named = request.model if request.model in self.deployment.variants else ""
            e.variant = e.variant or (candidates[0] if candidates else named)
            raise

    def _bounded(self, request: CompletionLike, body: dict) -> dict:
        """Hold the request to the deployment's caps (400 above them); a request without a
        length gets the default one, so nothing generates to the end of the context."""
        g = self.deployment.gateway
        for key in ("max_tokens", "max_completion_tokens"):
            if (getattr(request, key) or 0) > g.max_tokens_cap:
                raise GatewayError(
                    400, f"{key} {getattr(request, key)} is over the cap {g.max_tokens_cap}",
                    param=key,
                )  # fmt: skip
        capped = {"n": (request.n, g.max_n), "best_of": (request.best_of, g.max_n)}
        capped |= {k: (getattr(request, k), g.max_logprobs) for k in request.LOGPROB_COUNTS}
        capped["prompt"] = (request.prompt_count(), g.max_prompts)
        for key, (value, cap) in capped.items():
            if value is not None and value > cap:
                what = "prompts in one request" if key == "prompt" else key
                raise GatewayError(400, f"{what} {value} is over the cap {cap}", param=key)
        if request.max_tokens is None and request.max_completion_tokens is None:
            return {**body, "max_tokens": g.default_max_tokens}
        return body

    async def _forward(self, route, request, body, alias, candidates, on_done) -> Response:
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
            engine.enter()
            try:
                response = await send(engine, route, upstream, stream=request.stream, alias=alias)
            except EngineUnavailable as e:
                engine.leave()
                log.warning("%s; trying the next candidate if any", e)
                if self._evidence is not None and alias:
                    self._evidence.request(alias, name, failed=True)
                continue
            except GatewayError as e:
                engine.leave()
                e.variant = name
                raise
            except BaseException:
                engine.leave()
                raise
            if attempt:
                m.FALLBACKS.labels(alias or "none", candidates[0], name).inc()
            meta = {"x-sparsegate-variant": name, "x-sparsegate-fallbacks": str(attempt)}
            if alias:
                meta["x-sparsegate-alias"] = alias
            done = _Done(self, engine, alias, route, timings, body, request.prompt_text(), on_done)
            if request.stream:
                return self._stream(response, request, done, meta)
            timings.end = time.perf_counter()
            usage, text, timings.output_bytes = _usage_and_text(response.content)
            done(response.status, usage, text)
            return Response(
                response.content,
                status_code=response.status,
                media_type="application/json",
                headers={**meta, **timings.headers(), **_usage_headers(usage)},
            )
        if busy:
            raise GatewayError(
                429, f"all engines for {request.model!r} are at capacity; retry shortly",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        raise GatewayError(503, f"no engine ready for {request.model!r}")

    def _stream(self, response, request, done: "_Done", meta) -> Response:
        if response.status != 200:  # an engine's own error passes through

            async def error_body():
                try:
                    yield await response.read()
                finally:
                    response.release()
                    done(response.status, None, None)

            return _ClosingStream(error_body(), response, done, status_code=response.status,
                                  media_type="application/json", headers=meta)  # fmt: skip
        wants_usage = bool(request.stream_options and request.stream_options.include_usage)
        usage: dict = {}
        # The text is joined only where a shadow copy or quality scoring may need it.
        text: list[str] | None = [] if done.needs_text() else None

        async def events():
            status, outcome = 200, acc.ABORTED  # unless the stream runs to its end
            try:
                async for chunk in relay_sse(
                    response,
                    client_wants_usage=wants_usage,
                    timings=done.timings,
                    usage=usage,
                    text=text,
                ):
                    yield chunk
                outcome = acc.OK
            except StreamTimeout:
                status, outcome = 504, acc.TIMEOUT
                yield _error_event(status, "timeout", f"engine {done.engine.name} stopped "
                                   "sending in time")  # fmt: skip
            except StreamBroken as e:
                status, outcome = 502, acc.ENGINE_ERROR
                log.warning("engine %s failed mid-stream: %s", done.engine.name, e)
                yield _error_event(status, "engine_error", f"engine {done.engine.name} failed "
                                   f"mid-stream: {e}")  # fmt: skip
            finally:
                done(status, usage, None if text is None else "".join(text), outcome=outcome)

        return _ClosingStream(
            events(), response, done, media_type="text/event-stream", headers=meta
        )


class _ClosingStream(StreamingResponse):
    """A streamed response that always closes the engine connection (shielded: on a client
    disconnect this runs in a cancelled task) and the request's books; when the client left
    before the body generator even started, its `finally` never ran, so the request counts
    as aborted here."""

    def __init__(self, content, upstream: aiohttp.ClientResponse, done: "_Done", **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._upstream, self._done = upstream, done

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Returns the connection to the pool after a complete stream, closes it otherwise
            # (the client left: vLLM sees the disconnect and aborts the request).
            self._upstream.release()
            self._done(self.status_code, None, None, outcome=acc.ABORTED)


class _Done:
    """Closes a request's books once: engine slot, metrics, shadow copy, quality sample."""

    def __init__(self, gateway, engine, alias, route, timings, body, prompt, on_done) -> None:
        self.gateway, self.engine, self.alias, self.route = gateway, engine, alias, route
        self.timings, self.body, self.prompt, self.on_done = timings, body, prompt, on_done
        self.closed = False

    def needs_text(self) -> bool:
        alias = self.gateway.deployment.aliases.get(self.alias)
        shadows = bool(alias and alias.shadow and alias.shadow.fraction > 0)
        return shadows or self.gateway.quality.samples(self.alias, self.engine.name)

    def __call__(self, status: int, usage, text, *, outcome: str | None = None) -> None:
        if self.closed:  # the stream's own `finally` came first
            return
        self.closed = True
        self.engine.leave()
        if outcome is None:
            # An engine's 4xx is the request's fault (a bad parameter), not the engine's.
            outcome = acc.OK if status == 200 else acc.INVALID if status < 500 else acc.ENGINE_ERROR
        acc.record_request(
            variant=self.engine.name, alias=self.alias, route=self.route, outcome=outcome,
            status=status, timings=self.timings, usage=usage, prompt=self.prompt,
        )  # fmt: skip
        if self.on_done is not None:
            self.on_done(self.engine.name, outcome, usage, self.timings.output_bytes)
        evidence = self.gateway.evidence
        if evidence is not None and self.alias and outcome in _COUNTED:
            tokens = (usage or {}).get("completion_tokens") or 0
            evidence.request(self.alias, self.engine.name, outcome != acc.OK, self.timings,
                             tokens)  # fmt: skip
        if outcome == acc.OK:
            self.gateway.probes.served(self.engine.name)
        if outcome != acc.OK or not self.alias or text is None:
            return
        target = self.gateway.router.shadow_for(self.alias)
        if target and target != self.engine.name:
            self.gateway.shadow.submit(
                self.alias, self.gateway.engines[target], self.route, self.body, text
            )
        if self.prompt is not None:
            # A completion continues its prompt; a chat answer follows the messages.
            joiner = "" if self.route == "/v1/completions" else "\n\n"
            self.gateway.quality.maybe_score(
                self.alias, self.engine.name, self.prompt + joiner + text
            )


def _usage_and_text(content: bytes) -> tuple[dict, str | None, int]:
    try:
        payload = json.loads(content)
    except ValueError:
        return {}, None, 0
    if not isinstance(payload, dict):
        return {}, None, 0
    return payload.get("usage") or {}, event_text(payload), text_bytes(payload)


def _error_event(status: int, kind: str, message: str) -> bytes:
    """An SSE event in OpenAI's error format: how a stream that already began reports one."""
    error = {"message": message, "type": kind, "param": None, "code": status}
    return f"data: {json.dumps({'error': error})}\n\n".encode()


def _usage_headers(usage: dict) -> dict[str, str]:
    if not usage:
        return {}
    return {
        "x-sparsegate-prompt-tokens": str(usage.get("prompt_tokens", "")),
        "x-sparsegate-completion-tokens": str(usage.get("completion_tokens", "")),
    }
