"""The one exception-to-response mapper: every non-2xx answer is the OpenAI error shape.

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "max_tokens", "code": "invalid_value"}}

Routes raise :class:`APIError` (or a domain error from the library); FastAPI's
own 404/405/422 and anything unexpected go through the same handlers, so a
client never sees a second error format. Unexpected exceptions are logged
with the request id and answered 500 without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from convtune.errors import ConfigError, ConvtuneError, DataValidationError, ModelNotFoundError

log = logging.getLogger("convtune.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An error answer: HTTP status + the OpenAI error fields (+ extra headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"{kind} {ident!r} not found", param=param, code=f"{kind.replace(' ', '_')}_not_found"
    )


def overloaded(retry_after_s: int = 1) -> APIError:
    return APIError(
        429,
        "the server is at capacity; retry shortly",
        code="overloaded",
        headers={"Retry-After": str(retry_after_s)},
    )


def from_exception(exc: Exception) -> APIError:
    """Any exception -> APIError (domain errors keep their meaning; the rest are 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation(exc)
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = {404: "no such route", 405: "method not allowed"}.get(status, str(exc.detail))
        return APIError(
            status,
            message,
            code={404: "unknown_url", 405: "method_not_allowed"}.get(status),
            headers=dict(exc.headers or {}),
        )
    from convtune.jobs.files import FileTooLarge
    from convtune.jobs.service import JobError

    from rlhf.feedback import FeedbackError

    if isinstance(exc, FeedbackError):
        return APIError(exc.status, str(exc), param=exc.param,
                        code="response_not_found" if exc.status == 404 else "invalid_value")
    if isinstance(exc, JobError):
        return APIError(exc.status, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, FileTooLarge):
        return APIError(413, str(exc), param="file", code="file_too_large")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, DataValidationError):
        return APIError(400, exc.report(), code="invalid_data")
    if isinstance(exc, (ConfigError, ConvtuneError)):
        return APIError(400, str(exc), code="invalid_value")
    return APIError(500, "internal server error", type="server_error", code="internal_error")


def _validation(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    if first.get("type") == "missing":
        return APIError(400, f"{param or 'body'}: field required{more}", param=param, code="missing_required")
    return APIError(400, f"{param or 'request'}: {msg}{more}", param=param, code="invalid_value")


def error_response(err: APIError, request: Request | None = None) -> JSONResponse:
    headers = dict(err.headers)
    rid = getattr(request.state, "request_id", None) if request is not None else None
    if rid:
        headers["x-request-id"] = rid
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        err = from_exception(exc)
        if err.status == 500:  # a bug: keep the traceback (503 draining / 504 deadline are expected)
            log.exception("request %s failed", getattr(request.state, "request_id", "-"), exc_info=exc)
        return error_response(err, request)

    for kind in (APIError, RequestValidationError, StarletteHTTPException, ConvtuneError, Exception):
        app.add_exception_handler(kind, handle)
