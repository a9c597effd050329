"""The gateway's OpenAPI document: what its routes take and answer, this deployment's caps
included, so that a schema-driven fuzzer (schemathesis) generates meaningful bodies and
checks every answer against it.

The routes read their bodies themselves (size counted as it arrives, errors in OpenAI's
format), so FastAPI cannot infer these schemas: they come from the protocol models."""

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.gateway.config import Deployment
from app.gateway.errors import _TYPES
from app.gateway.protocol import ChatCompletionRequest, CompletionRequest

# Deeper JSON than any OpenAI body needs (tool schemas included) is refused with a 400.
MAX_NESTING = 64

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["integer", "string", "null"]},
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
# Each streamed event's data: a chunk, the usage event or an error event (JSON objects), then
# the `[DONE]` sentinel.
_SSE_EVENT = {"anyOf": [{"type": "object"}, {"const": "[DONE]"}]}
_BODY_ROUTES = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}
_GET_ROUTES = ("/v1/models", "/v1/variants/compare", "/v1/rollouts", "/metrics")


def _errors(*statuses: int | str) -> dict:
    return {
        str(s): {
            "description": _TYPES.get(s, "error") if isinstance(s, int) else "engine's own error",
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        for s in statuses
    }


def _with_caps(schema: dict, deployment: Deployment) -> dict:
    """Put the deployment's caps and served names into a request schema."""
    g = deployment.gateway
    caps = {"n": g.max_n, "best_of": g.max_n, "logprobs": g.max_logprobs,
            "top_logprobs": g.max_logprobs, "prompt_logprobs": g.max_logprobs,
            "max_tokens": g.max_tokens_cap, "max_completion_tokens": g.max_tokens_cap}  # fmt: skip
    props = schema["properties"]
    for name, cap in caps.items():
        for branch in props.get(name, {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = cap
    props["model"] = {"type": "string", "enum": [*deployment.variants, *deployment.aliases]}
    for branch in props.get("prompt", {}).get("anyOf", []):
        if branch.get("type") == "array" and branch["items"].get("type") != "integer":
            branch["maxItems"] = g.max_prompts  # several prompts (one list of ids is one)
    return schema


def _closed(schema: dict) -> dict:
    """Objects list their documented fields only. The gateway passes undocumented fields on
    to vLLM, but a document that invites arbitrary nested JSON makes a fuzzer spend its cases
    (and its recursion limit) there instead of on the fields that matter."""
    if schema.get("type") == "object" and "properties" in schema:
        schema["additionalProperties"] = False
    return schema


def openapi_schema(app: FastAPI, deployment: Deployment) -> dict:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title="sparsegate", version="1", routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for path, model in _BODY_ROUTES.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update({k: _closed(v) for k, v in body.pop("$defs", {}).items()})
        components[model.__name__] = _closed(_with_caps(body, deployment))
        operation = schema["paths"][path]["post"]
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref}},
        }
        operation["responses"] = {
            "200": {
                "description": "the engine's answer, whole (JSON) or streamed (SSE)",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
            # The gateway's own refusals, and an engine's 4xx passed through as it came.
            **_errors(400, 401, 403, 404, 413, 429, 503, 504, "4XX"),
        }
    for path in _GET_ROUTES:
        # (403: a key whose scope does not open the route, such as a scraper's)
        schema["paths"][path]["get"]["responses"].update(_errors(401, 403))
    # (503: the registry's database, where rollouts live, cannot be read)
    schema["paths"]["/v1/rollouts"]["get"]["responses"].update(_errors(503))
    app.openapi_schema = schema
    return schema
