"""Routes of the OpenAI-compatible gateway (FastAPI)."""

import asyncio
import json
import logging
import os
import re
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.gateway import accounting as acc
from app.gateway.access import Access
from app.gateway.config import Deployment, load_deployment, quality_plans, resolve_production
from app.gateway.engine_books import EngineBooks
from app.gateway.errors import GatewayError, error_response
from app.gateway.openapi import MAX_NESTING, openapi_schema
from app.gateway.pricing import Pricer
from app.gateway.protocol import ChatCompletionRequest, CompletionLike, CompletionRequest
from app.gateway.rollout_sync import RolloutSync
from app.gateway.serving import PIN_HEADER, Gateway
from app.gateway.tenancy import Tenancy
from app.gateway.tenant_keys import TenantKeys
from app.metrics.compare import compare
from app.metrics.derived import render_derived
from app.metrics.equal_work import WORKLOAD_FIELDS, Mix
from app.metrics.exposition import CONTENT_TYPE_LATEST, read_samples, render
from app.metrics.facts import load_facts, publish_facts

log = logging.getLogger("sparsegate.gateway")
# JSON can escape a lone surrogate (\ud800), which no tokenizer can read; raw UTF-8 cannot
# hold one. Only a body with such an escape (pairs too) is encoded again to find out.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
ROUTES = ("/v1/completions", "/v1/chat/completions")
_OUTCOMES = {429: acc.REJECTED, 503: acc.UNAVAILABLE, 504: acc.TIMEOUT}


def create_app(deployment: Deployment, registry_home: Path | None = None) -> FastAPI:
    deployment = resolve_production(deployment, registry_home)
    gateway = Gateway(deployment)
    books = EngineBooks(gateway.engines)
    prices = {n: v.price_per_hour for n, v in deployment.variants.items()}
    facts = load_facts(
        registry_home, {n: v.registry_name or n for n, v in deployment.variants.items()}
    )
    publish_facts(facts)
    tenants = TenantKeys(registry_home) if deployment.gateway.tenant_keys else None
    access = Access(deployment.gateway.key_scopes, tenants)
    pricer = Pricer(books, prices)
    tenancy = Tenancy(deployment, tenants, pricer) if tenants else None
    # Rollouts live in the registry: a gateway with one follows them (and reports evidence).
    rollouts = RolloutSync(registry_home, gateway) if registry_home else None
    if access.open:
        log.warning("no API keys configured: the gateway is open to anyone who can reach it")

    async def compared(workload: Mix | None = None) -> dict:
        read = await books.read()
        # As the aliases are routed now (a rollout may have moved them).
        references = {a: p.reference for a, p in quality_plans(gateway.deployment).items()}
        return compare(list(deployment.variants), read_samples(), facts, read, prices, workload,
                       references, books.tokenizers)  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await books.read()  # each engine's books as this gateway starts: the baseline
        tasks = []
        if tenants:
            await tenants.refresh()  # keys work from the first request
            tasks = [asyncio.create_task(tenants.run()), asyncio.create_task(pricer.run())]
        if rollouts:
            await rollouts.refresh()  # routed as the rollouts say from the first request
            tasks.append(asyncio.create_task(rollouts.run()))
        yield
        for task in tasks:
            task.cancel()
        await gateway.close()  # (its last requests settled and booked)
        if tenancy:
            await tenancy.close()
            await tenants.close()  # the last usage rows saved
        if rollouts:
            await rollouts.close()  # the last evidence saved

    app = FastAPI(title="sparsegate", lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        if request.url.path in ROUTES:
            acc.record_request(
                variant=exc.variant, alias=exc.alias, route=request.url.path,
                outcome=_OUTCOMES.get(exc.status, acc.INVALID), status=exc.status,
            )  # fmt: skip
        return exc.response()

    async def read_body(
        request: Request, model: type[CompletionLike]
    ) -> tuple[CompletionLike, dict]:
        raw = await read_limited(request, deployment.gateway.max_body_bytes)
        try:
            body = json.loads(raw)
        except RecursionError:
            raise GatewayError(400, "request body is nested too deeply") from None
        except ValueError as e:
            raise GatewayError(400, f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise GatewayError(400, "request body must be a JSON object")
        if nesting(body, MAX_NESTING) > MAX_NESTING:
            raise GatewayError(400, f"request body is nested deeper than {MAX_NESTING} levels")
        if _SURROGATE_ESCAPE.search(raw) and not _encodable(body):
            raise GatewayError(
                400, "request body holds a lone surrogate (\\uD800-\\uDFFF): not valid Unicode"
            )
        try:
            return model.model_validate(body), body
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise GatewayError(400, f"{param}: {err['msg']}", param=param) from e

    async def generate(route: str, request: Request, model: type[CompletionLike]) -> Response:
        tenant = access.check(request)
        parsed, body = await read_body(request, model)
        if tenant is None or tenancy is None:
            return await gateway.handle(route, parsed, body, request.headers)
        try:
            access.check_model(tenant, parsed.model, request.headers.get(PIN_HEADER))
        except GatewayError:
            tenants.book.refused(tenant.name, "forbidden")
            raise
        ticket = await tenancy.admit(tenant, parsed)
        try:
            return await gateway.handle(route, parsed, body, request.headers, ticket.done)
        except GatewayError as e:  # refused before any engine answered (busy, none ready)
            ticket.done(e.variant, _OUTCOMES.get(e.status, acc.INVALID), None, 0)
            raise
        except BaseException:
            ticket.done("", acc.ABORTED, None, 0)
            raise

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate("/v1/completions", request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate("/v1/chat/completions", request, ChatCompletionRequest)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        tenant = access.check(request)
        listed = [m for m in gateway.models() if tenant is None or tenant.allows(m["id"])]
        return {"object": "list", "data": listed}

    @app.get("/v1/variants/compare")
    async def variants_compare(request: Request) -> dict:
        access.check(request, "operator")
        return await compared(workload_of(request.query_params))

    # The same figures as the compare view, so behind a key too (a scraper's key can
    # hold the `metrics` scope alone); /health, /ready, /docs and /openapi.json stay open.
    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        access.check(request, "metrics")
        derived = render_derived(await compared())
        return Response(render() + derived, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/rollouts")
    async def rollouts_now(request: Request) -> dict:
        """Each alias's latest rollout, its gates on the evidence so far, its last events."""
        access.check(request, "operator")
        try:
            return {"object": "list", "data": await rollouts.view() if rollouts else []}
        except Exception as e:  # the registry's database is away: say so, in OpenAI's format
            raise GatewayError(503, f"cannot read the rollouts: {e}") from None

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        page = resources.files("app.gateway").joinpath("static/dashboard.html").read_text()
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        engines = await gateway.ready()
        aliases = {a: any(engines[v] for v in cfg.split) for a, cfg in deployment.aliases.items()}
        ok = any(engines.values()) and all(aliases.values())
        body = {"ready": ok, "engines": engines, "aliases": aliases}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (no such route, a method the route does not take), in
        # OpenAI's format like every other error; an Allow header stays.
        message = {404: "no such route", 405: "method not allowed on this route"}.get(
            exc.status_code, str(exc.detail)
        )
        return error_response(exc.status_code, message, headers=exc.headers)

    app.openapi = lambda: openapi_schema(app, deployment)
    return app


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, counted as it arrives: past `limit` bytes the request is refused without
    reading the rest (a body without Content-Length is not buffered whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise GatewayError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def nesting(value: object, limit: int) -> int:
    """How deep a parsed JSON value nests, counted up to limit + 1: level by level over the
    containers only (no recursion on hostile input; a long list of numbers costs one pass)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [child for item in level
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, dict | list)]  # fmt: skip
    return depth


def app_from_env() -> FastAPI:
    """The factory each worker process calls (`sparsegate serve --workers N`)."""
    home = os.environ.get("SPARSEGATE_GATEWAY_REGISTRY")
    return create_app(
        load_deployment(Path(os.environ["SPARSEGATE_DEPLOYMENT"])), Path(home) if home else None
    )


def _encodable(body: dict) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def workload_of(params) -> Mix | None:
    """A workload to price on every variant's live fit instead of the traffic's own mean
    request (`?prompt_bytes=&output_bytes=&inflight=`, all three): a benchmark's load, say."""
    given = {k: params[k] for k in WORKLOAD_FIELDS if k in params}
    if not given:
        return None
    if len(given) < len(WORKLOAD_FIELDS):
        raise GatewayError(400, f"a workload needs all of {', '.join(WORKLOAD_FIELDS)}")
    values = {key: _number(text) for key, text in given.items()}
    for key, value in values.items():
        if not (0 < value < 1e12) or (key == "inflight" and value < 1):
            raise GatewayError(
                400, f"{key} must be a positive number (inflight at least 1)", param=key
            )
    return Mix(**values, requests=0.0)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # refused by the range check, as any other bad value
