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
        self, status: int, message: str, *, param: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        # Where it happened, for the metrics (set by the serving logic when known).
        self.variant = ""
        self.alias = ""

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, headers=self.headers)


def error_response(
    status: int, message: str, *, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "api_error"),
            "param": param,
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)
