"""Plain ASGI middleware (BaseHTTPMiddleware would break client-disconnect detection): request ids, API keys
and the upload cap, all applied before the app reads a byte of the body."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
import uuid
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parakeet.api.errors import error_response
from parakeet.core import errors, metrics

log = logging.getLogger("parakeet.api")

# Health, probes and metrics (routes/health.py, metrics.py, streams.py): open without an API key, and logged at
# DEBUG (load balancers and scrapers call them every few seconds).
PROBE_AND_METRICS_PATHS = (
    "/health", "/health/live", "/health/ready", "/healthz", "/readyz", "/v1/health/live", "/v1/health/ready",
    "/metrics", "/v1/metrics", "/status",
)  # fmt: skip
QUIET_PATHS = frozenset(PROBE_AND_METRICS_PATHS)  # their request lines go to DEBUG, not INFO
# A browser's WebSocket carries the API key as this subprotocol + the key (ApiKeyMiddleware).
WS_KEY_PROTOCOL = b"openai-insecure-api-key."
access_log = logging.getLogger("parakeet.access")


class RequestIdMiddleware:
    """Gives every HTTP request an id (scope state + X-Request-Id response header) and logs one line when it
    is finished: request id, method, path, status, error code, and what the route recorded in
    `scope["state"]["access"]` (audio seconds, decode/queue/compute ms, batch size, GPU id), total ms and
    the worker pid. Never audio or transcript text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex
        # A dict of this request's own: the server's lifespan state is shared by every request (uvicorn copies it
        # per request; not every ASGI host does).
        state = scope["state"] = dict(scope.get("state") or {})
        state["request_id"] = rid
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields = {
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "status": status or 500,
                "error_code": state.get("error_code"),
                **state.get("access", {}),
                "total_ms": round((time.perf_counter() - t0) * 1000, 2),
                "worker_pid": os.getpid(),
            }
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template: bounded labels
            metrics.REQUESTS.labels(route=route, status=str(fields["status"]), code=fields["error_code"] or "ok").inc()
            metrics.REQUEST_DURATION.labels(route=route).observe(fields["total_ms"] / 1000)
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            if access_log.isEnabledFor(level):
                text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "request_id")
                access_log.log(level, "request %s %s", rid, text, extra=fields)


class UploadLimitMiddleware:
    """Caps request bodies at `max_upload_bytes`: 413 from Content-Length before a byte of the body is read
    (uvicorn sends `100 Continue` only on the first receive), and a running count for chunked uploads. Also
    bounds the time a body may take (slow-upload defence): 408 when no byte arrives for `body_idle_timeout_s`,
    or when, after `body_grace_s`, the body has arrived slower than `body_min_rate_bytes_s` on average."""

    def __init__(
        self,
        app: ASGIApp,
        max_upload_bytes: int,
        body_idle_timeout_s: float,
        body_min_rate_bytes_s: float,
        body_grace_s: float,
    ) -> None:
        self.app = app
        self.max_bytes = max_upload_bytes
        self.idle_s, self.min_rate, self.grace_s = body_idle_timeout_s, body_min_rate_bytes_s, body_grace_s

    def _too_large(self, size: str) -> errors.UploadTooLarge:
        return errors.UploadTooLarge(f"request body of {size} exceeds the upload limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large(f"{int(declared)} bytes")
            rid = scope.get("state", {}).get("request_id")
            scope.setdefault("state", {})["error_code"] = exc.code
            log.debug("request %s -> 413 upload_too_large: %s", rid, exc.message)
            response = error_response(413, exc.message, type_="invalid_request_error", code=exc.code, request_id=rid)
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        received, started, body_done = 0, time.monotonic(), False

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, receive() waits for the disconnect: no limit applies
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                raise errors.BodyTimeout(
                    f"the request body sent nothing for {self.idle_s:g} s (the limit for a stalled body) "
                    f"after {received} bytes"
                ) from None
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_bytes:
                raise self._too_large(f"more than {received} bytes")
            elapsed = time.monotonic() - started
            if not body_done and elapsed > self.grace_s and received / elapsed < self.min_rate:
                raise errors.BodyTimeout(
                    f"the request body arrives at {received / elapsed:.0f} bytes/s, below the minimum of "
                    f"{self.min_rate:g} bytes/s after {self.grace_s:g} s"
                )
            return message

        await self.app(scope, counting_receive, send)


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer <key>` (what the OpenAI SDK's `api_key` sends) on every path but the
    open ones, before a byte of the body is read: an unauthenticated upload is refused unread (401 in the
    error table's shape, `WWW-Authenticate: Bearer`); a WebSocket is closed before it is accepted (1008 in ASGI
    terms; the client sees its handshake answered HTTP 403). Open prefixes (the browser page's `/ui/`) are safe only
    because a mount owns them: a path with dot segments under one is routed to that mount, never elsewhere.
    Browsers cannot set headers on a WebSocket, so a WebSocket may instead offer the key as the subprotocol
    `openai-insecure-api-key.<key>` (the convention of OpenAI's browser clients, e.g. openai-agents-js
    `OpenAIRealtimeWebSocket` with `useInsecureApiKey`); the route then accepts with another offered
    subprotocol (`websockets.accept`), never echoing the key. Each key is compared in constant time
    (`hmac.compare_digest`), all of them every time."""

    def __init__(
        self, app: ASGIApp, keys: Sequence[str], open_paths: Sequence[str], open_prefixes: Sequence[str] = ()
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def _matches(self, token: bytes) -> bool:
        # No early exit: the time taken does not tell which key, or how much of one, matched.
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return any(matches)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and self._matches(token):
            return True
        if scope["type"] == "websocket":
            offered = [p.encode() for p in scope.get("subprotocols", [])]
            tokens = [p[len(WS_KEY_PROTOCOL) :] for p in offered if p.startswith(WS_KEY_PROTOCOL)]
            return any([self._matches(t) for t in tokens])
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in self.open_paths or path.startswith(self.open_prefixes) or self._authorized(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": "missing or invalid API key"})
        exc = errors.Unauthorized("missing or invalid API key: send `Authorization: Bearer <key>`")
        rid = scope.get("state", {}).get("request_id")
        scope.setdefault("state", {})["error_code"] = exc.code
        log.debug("request %s -> 401 %s: %s", rid, exc.code, exc.message)
        response = error_response(401, exc.message, type_="invalid_request_error", code=exc.code, request_id=rid)
        return await response(scope, receive, send)
