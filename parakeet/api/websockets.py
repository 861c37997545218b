"""What both live-stream protocols (/ws and /v1/realtime) share: an ordered outbox in which consecutive partials
collapse into the latest, reading the socket within the stream limits, the read loop with its one ending (finalize,
send, close), and the close codes (RFC 6455 section 7.4.1; docs/streaming.md). The order of a stream's events
(no partial of the next utterance before the final of the previous) is the session's
(parakeet.pipeline.stream_session); the outbox keeps it.

Close codes: 1000 normal; 1001 the worker is shutting down (after the current utterance's final); 1003 too many
unusable messages; 1008 idle or too long a session; 1009 message too big; 1011 server fault; 1012 shutting down
at connect; 1013 try again later (too many streams, model loading).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from parakeet.api.middleware import WS_KEY_PROTOCOL
from parakeet.core import errors
from parakeet.core.tuning import Tuning
from parakeet.pipeline.stream_session import StreamSession

log = logging.getLogger("parakeet.streams")

NORMAL, GOING_AWAY, UNSUPPORTED, POLICY, TOO_BIG, SERVER_ERROR, RESTART, TRY_LATER = (
    1000, 1001, 1003, 1008, 1009, 1011, 1012, 1013,
)  # fmt: skip
MAX_BAD_MESSAGES = 20  # unusable messages in a row before a 1003 close
KEY_PROTOCOL = WS_KEY_PROTOCOL.decode()
MAX_UNSENT_MESSAGES = 256  # messages queued for a client that does not read them before a 1008 close


def refusal_code(exc: errors.ParakeetError) -> int:
    """The close code for a stream refused at connect."""
    if isinstance(exc, errors.ShuttingDown):
        return RESTART
    if isinstance(exc, errors.TooManyStreams | errors.NotReady):
        return TRY_LATER
    return POLICY


class StreamClosing(Exception):
    """End the connection: send `message` (if any) and close with `code`; finalize first if `finalize`."""

    def __init__(
        self, code: int, message: dict[str, Any] | None = None, *, finalize: bool = False, flush: bool = True
    ) -> None:
        super().__init__(code)
        self.code, self.message, self.finalize, self.flush = code, message, finalize, flush


Message = dict[str, Any]


class Outbox:
    """Messages to one client, sent in order by one task. A partial that is still queued when the next one comes
    is replaced by it (latest wins: a slow reader gets fewer partials, never a backlog of stale ones)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._queue: deque[tuple[Message, bool]] = deque()  # (message, is a partial)
        self._changed = asyncio.Event()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._send_loop())

    @property
    def unsent(self) -> int:
        """Messages queued for the client, not sent yet."""
        return len(self._queue)

    def put(self, message: Message) -> None:
        self._queue.append((message, False))
        self._changed.set()

    def put_partial(self, message: Message) -> None:
        if self._queue and self._queue[-1][1]:
            self._queue[-1] = (message, True)
        else:
            self._queue.append((message, True))
        self._changed.set()

    async def _send_loop(self) -> None:
        while True:
            if self._queue:
                message, _ = self._queue.popleft()
                await self.websocket.send_json(message)
                continue
            if self._closing:
                return
            self._changed.clear()
            await self._changed.wait()

    async def flush(self, timeout_s: float) -> None:
        """Send everything queued within `timeout_s`, then stop."""
        self._closing = True
        self._changed.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        self.cancel()

    def cancel(self) -> None:
        """Drop everything (the client is gone)."""
        self._queue.clear()
        self._task.cancel()


class StreamReader:
    """Reads one socket within the stream limits: backpressure (`max_lag_s`), idle timeout, session length,
    message size, shutdown."""

    def __init__(self, websocket: WebSocket, tuning: Tuning, session: StreamSession, outbox: Outbox) -> None:
        self.websocket, self.tuning, self.session, self.outbox = websocket, tuning, session, outbox
        self.max_frame_bytes = tuning.stream_max_frame_bytes
        self.deadline = time.monotonic() + tuning.stream_max_session_s
        self.bad_messages = 0

    async def receive(self) -> bytes | str:
        """The next message's payload.

        Raises:
            WebSocketDisconnect: the client went away.
            StreamClosing: a limit was hit, or the worker is shutting down (finalize, then close).
        """
        t, closing = self.tuning, self.session.closing
        if self.outbox.unsent > MAX_UNSENT_MESSAGES:  # the client sends but does not read: its backlog would grow
            why = f"{self.outbox.unsent} messages wait for the client to read them, the limit is {MAX_UNSENT_MESSAGES}"
            raise StreamClosing(POLICY, _error("client_not_reading", why), flush=False)
        if not self.session.has_room:  # backpressure: do not read until the stream has caught up
            await _first(self.session.wait_for_room(), closing.wait())
        if closing.is_set():
            raise StreamClosing(GOING_AWAY, _error("shutting_down", "the worker is shutting down"), finalize=True)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._too_long()
        receive = asyncio.ensure_future(self.websocket.receive())
        await _first(receive, closing.wait(), timeout=min(t.stream_idle_timeout_s, left))
        if not receive.done():
            receive.cancel()
            if closing.is_set():
                raise StreamClosing(GOING_AWAY, _error("shutting_down", "the worker is shutting down"), finalize=True)
            # Which limit ran out is the one waited for. uvloop (uvicorn's loop) times on libuv's millisecond
            # clock and can wake up to ~1 ms before time.monotonic() reaches the deadline (measured: 6 of 300
            # waits, by up to 0.8 ms), so "now >= deadline" was sometimes false at the session limit.
            if left <= t.stream_idle_timeout_s:
                raise self._too_long()
            raise StreamClosing(
                POLICY,
                _error("idle_timeout", f"no message for {t.stream_idle_timeout_s:g} s (the limit for a silent stream)"),
                finalize=True,
            )
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        payload: bytes | str = message["bytes"] if message.get("bytes") is not None else message.get("text") or ""
        if len(payload) > self.max_frame_bytes:
            raise StreamClosing(
                TOO_BIG,
                _error(
                    "message_too_big",
                    f"a message of {len(payload)} bytes exceeds the limit of {self.max_frame_bytes} bytes",
                ),
            )
        return payload

    def _too_long(self) -> StreamClosing:
        limit = self.tuning.stream_max_session_s
        message = _error("session_too_long", f"the stream reached the limit of {limit:g} s (the longest stream)")
        return StreamClosing(POLICY, message, finalize=True)

    def bad_message(self) -> None:
        """Count an unusable message; too many in a row close the stream (1003)."""
        self.bad_messages += 1
        if self.bad_messages >= MAX_BAD_MESSAGES:
            raise StreamClosing(UNSUPPORTED, _error("too_many_bad_messages", f"{MAX_BAD_MESSAGES} unusable messages"))

    def good_message(self) -> None:
        self.bad_messages = 0


def _error(code: str, message: str) -> Message:
    return {"code": code, "message": message}


async def _first(*aws: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait until the first of `aws` finishes (or `timeout`); cancel the others that were created here."""
    tasks = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, original in zip(tasks, aws, strict=True):
            if task is not original and not task.done():
                task.cancel()


async def accept(websocket: WebSocket, preferred: str | None = None) -> None:
    """Accept the handshake, echoing one of the subprotocols the client offered (a browser fails the connection
    when it offered some and the server picks none, RFC 6455 section 4.1): `preferred` if offered, else the first
    that is not an API key (`openai-insecure-api-key.<key>`, checked by ApiKeyMiddleware), else none."""
    offered = [p for p in websocket.scope.get("subprotocols", []) if not p.startswith(KEY_PROTOCOL)]
    chosen = preferred if preferred in offered else (offered[0] if offered else None)
    await websocket.accept(subprotocol=chosen)


async def close(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close if still open (the client may be gone); a close reason is at most 123 bytes (RFC 6455 5.5)."""
    if websocket.client_state == WebSocketState.CONNECTED and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason.encode()[:123].decode(errors="ignore"))


class StreamProtocol(Protocol):
    """What a live protocol gives `serve_stream`: its current session, one read step, and its own messages."""

    outbox: Outbox

    @property
    def session(self) -> StreamSession | None: ...

    async def step(self) -> None:
        """Read and handle one client message (raises WebSocketDisconnect or StreamClosing to end)."""

    def finalize(self) -> None:
        """End the current utterance so that its final is sent before the close."""

    def error_message(self, detail: Message) -> Message:
        """The protocol's error message for `{"code", "message"}`."""
        ...


async def serve_stream(websocket: WebSocket, protocol: StreamProtocol, drain_s: float) -> None:
    """Run a protocol's read loop until the client leaves or a limit/shutdown ends the stream; then finalize the
    current utterance if the ending asks for it, wait for its final (at most `drain_s`), send what is queued, close
    the session and the socket with the ending's code."""
    code, reason = NORMAL, ""
    outbox = protocol.outbox
    try:
        while True:
            await protocol.step()
    except WebSocketDisconnect:
        outbox.cancel()  # the client is gone: its pending finals are dropped before they reach the GPU
        _close_session(protocol)
        return
    except StreamClosing as ending:
        code, reason = ending.code, (ending.message or {}).get("code", "")
        if not ending.flush:  # a client that does not read would hold the flush for the whole drain time
            outbox.cancel()
            _close_session(protocol)
            await close(websocket, code, reason)
            return
        if ending.finalize:
            protocol.finalize()
        if protocol.session is not None:
            await protocol.session.wait_finals(drain_s)
        if ending.message is not None:
            outbox.put(protocol.error_message(ending.message))
    except Exception:
        log.exception("stream failed")
        code, reason = SERVER_ERROR, "internal_error"
        outbox.put(protocol.error_message(_error("internal_error", "the server failed on this stream")))
    _close_session(protocol)
    await outbox.flush(drain_s)
    await close(websocket, code, reason)


def _close_session(protocol: StreamProtocol) -> None:
    if protocol.session is not None:
        protocol.session.close()
