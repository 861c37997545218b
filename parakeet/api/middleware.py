"""Plain ASGI middleware (BaseHTTPMiddleware would break client-disconnect detection): request ids and
the upload cap, both applied before the app reads a byte of the body."""

from __future__ import annotations

import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parakeet.api.errors import error_response
from parakeet.core import errors

log = logging.getLogger("parakeet.api")


class RequestIdMiddleware:
    """Gives every HTTP request an id (scope state + X-Request-Id response header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class UploadLimitMiddleware:
    """Caps request bodies at `max_upload_bytes`: 413 from Content-Length before a byte of the body is read
    (uvicorn sends `100 Continue` only on the first receive), and a running count for chunked uploads."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_upload_bytes

    def _too_large(self, size: str) -> errors.UploadTooLarge:
        return errors.UploadTooLarge(f"request body of {size} exceeds the upload limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large(f"{int(declared)} bytes")
            rid = scope.get("state", {}).get("request_id")
            log.info("request %s -> 413 upload_too_large: %s", rid, exc.message)
            response = error_response(413, exc.message, type_="invalid_request_error", code=exc.code, request_id=rid)
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large(f"more than {received} bytes")
            return message

        await self.app(scope, counting_receive, send)
