"""Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

from fastapi.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: dict | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.kind = kind  # the error's type and code where its status alone does not tell
        # Where it happened, for the metrics (set by the serving logic when known).
        self.variant = ""
        self.alias = ""

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, param=self.param, headers=self.headers, kind=self.kind
        )


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    headers: dict | None = None,
    kind: str | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": kind or _TYPES.get(status, "api_error"),
            "param": param,
            "code": kind or status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)
