"""Routes of the OpenAI-compatible gateway (FastAPI)."""

import hashlib
import hmac
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from app.gateway.config import Deployment
from app.gateway.errors import GatewayError, error_response
from app.gateway.protocol import ChatCompletionRequest, CompletionLike, CompletionRequest
from app.gateway.serving import Gateway

log = logging.getLogger("sparsegate.gateway")


def create_app(deployment: Deployment) -> FastAPI:
    gateway = Gateway(deployment)
    keys = {k.lower() for k in deployment.gateway.api_keys_sha256}
    if not keys:
        log.warning("no API keys configured: the gateway is open to anyone who can reach it")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await gateway.close()

    app = FastAPI(title="sparsegate", lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    def authorize(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(token.encode()).hexdigest()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(digest, k) for k in keys):
            raise GatewayError(401, "invalid or missing API key (Authorization: Bearer ...)")

    async def read_body(
        request: Request, model: type[CompletionLike]
    ) -> tuple[CompletionLike, dict]:
        limit = deployment.gateway.max_body_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise GatewayError(413, f"request body over {limit} bytes")
        raw = await request.body()
        if len(raw) > limit:
            raise GatewayError(413, f"request body over {limit} bytes")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise GatewayError(400, f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise GatewayError(400, "request body must be a JSON object")
        try:
            return model.model_validate(body), body
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise GatewayError(400, f"{param}: {err['msg']}", param=param) from e

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorize(request)
        parsed, body = await read_body(request, CompletionRequest)
        return await gateway.handle("/v1/completions", parsed, body, request.headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        parsed, body = await read_body(request, ChatCompletionRequest)
        return await gateway.handle("/v1/chat/completions", parsed, body, request.headers)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": gateway.models()}

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

    @app.exception_handler(404)
    async def _not_found(_request: Request, _exc) -> JSONResponse:
        return error_response(404, "no such route")

    return app
