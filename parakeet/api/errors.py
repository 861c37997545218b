"""The one table from domain exceptions (parakeet.core.errors) to HTTP status, and the one JSON error shape.

Every error response, from a route, a middleware or the framework (404, 405, 422), goes through
`error_response`; `install_error_handlers` wires the table into an app. No domain logic lives here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from parakeet.api.schemas import ErrorResponse
from parakeet.core import errors, metrics

log = logging.getLogger("parakeet.api")

RETRY_AFTER_LOADING_S = 10

# exception class -> (HTTP status, envelope type). Checked in order: subclasses before their bases.
ERROR_TABLE: list[tuple[type[errors.ParakeetError], int, str]] = [
    (errors.Unauthorized, 401, "invalid_request_error"),
    (errors.UploadTooLarge, 413, "invalid_request_error"),
    (errors.BodyTimeout, 408, "invalid_request_error"),
    (errors.AudioTooLong, 413, "invalid_request_error"),
    (errors.EmptyAudio, 400, "invalid_request_error"),
    (errors.UnsupportedAudio, 415, "invalid_request_error"),
    (errors.DecoderUnavailable, 415, "invalid_request_error"),
    (errors.InvalidAudio, 400, "invalid_request_error"),
    (errors.BadRequest, 400, "invalid_request_error"),
    (errors.UrlRefused, 400, "invalid_request_error"),
    (errors.UrlFetchFailed, 422, "invalid_request_error"),
    (errors.UrlTimeout, 504, "service_unavailable_error"),
    (errors.JobsFull, 429, "rate_limit_error"),
    (errors.Overloaded, 429, "rate_limit_error"),
    (errors.TooManyStreams, 429, "rate_limit_error"),
    (errors.DeadlineExceeded, 503, "service_unavailable_error"),
    (errors.DeviceOutOfMemory, 503, "service_unavailable_error"),
    (errors.ClientDisconnected, 499, "invalid_request_error"),
    (errors.NotReady, 503, "service_unavailable_error"),
    (errors.JobsDatabaseUnavailable, 503, "service_unavailable_error"),
    (errors.ShuttingDown, 503, "service_unavailable_error"),
    (errors.JobStorageFull, 507, "server_error"),
    (errors.InsufficientStorage, 507, "server_error"),
    (errors.JobNotFound, 404, "invalid_request_error"),
    (errors.JobNotFinished, 409, "invalid_request_error"),
    (errors.InferenceError, 500, "server_error"),
]


def error_response(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None,
    param: str | None = None,
    request_id: str | None = None,
    retry_after_s: int | None = None,
) -> JSONResponse:
    """The one error shape. 429 and 503 always carry Retry-After (seconds; default 10) and the same delay as
    `retry-after-ms`, which the openai SDK reads first (openai-python `_base_client.py`,
    `_parse_retry_after_header`)."""
    body = ErrorResponse.model_validate({"error": {"message": message, "type": type_, "param": param, "code": code}})
    headers = {"X-Request-Id": request_id} if request_id else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (429, 503):
        delay_s = retry_after_s if retry_after_s is not None else RETRY_AFTER_LOADING_S
        headers["Retry-After"] = str(delay_s)
        headers["retry-after-ms"] = str(delay_s * 1000)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def request_id(request: Request) -> str:
    """The id RequestIdMiddleware gave this request ("" outside it)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


async def _parakeet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ParakeetError)
    status, type_ = next(((s, t) for cls, s, t in ERROR_TABLE if isinstance(exc, cls)), (500, "server_error"))
    rid = request_id(request)
    request.state.error_code = exc.code  # for the request's log line (RequestIdMiddleware)
    if exc.code in metrics.REJECTION_REASONS:
        metrics.REJECTED.labels(reason=metrics.REJECTION_REASONS[exc.code]).inc()
    message = exc.message
    if status == 500:
        log.error("request %s failed: %s", rid, exc.message, exc_info=exc.__cause__ or exc)
        message = f"{exc.message} (request id {rid})"  # the one thing a user can quote in a bug report
    else:
        log.debug("request %s -> %d %s: %s", rid, status, exc.code, exc.message)
    retry_after_s = getattr(exc, "retry_after_s", None)
    return error_response(
        status, message, type_=type_, code=exc.code, param=exc.param, request_id=rid, retry_after_s=retry_after_s
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}
    response = error_response(
        exc.status_code,
        str(exc.detail),
        type_="invalid_request_error" if exc.status_code < 500 else "server_error",
        code=codes.get(exc.status_code, f"http_{exc.status_code}"),
        request_id=request_id(request),
    )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(
        400, f"invalid request: {first.get('msg', 'malformed')}", type_="invalid_request_error",
        code="invalid_request", param=param, request_id=request_id(request),
    )  # fmt: skip


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id(request)
    request.state.error_code = "internal_error"
    log.error("request %s: unhandled %s", rid, type(exc).__name__, exc_info=exc)
    return error_response(
        500, f"internal error (request id {rid})", type_="server_error", code="internal_error", request_id=rid
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the table above."""
    app.add_exception_handler(errors.ParakeetError, _parakeet_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled_error)
