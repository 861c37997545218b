"""Test helpers for the live protocols in-process (Starlette's TestClient WebSocket sessions): PCM16 of a waveform,
frames sent at real time or at once, messages read with a time limit (a hang fails the test with a message instead
of waiting for pytest's timeout), the messages up to the server's close, and the SDK's own Realtime event types as
the oracle of every Realtime event."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import anyio
import numpy as np
import soundfile as sf
import soxr
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

FRAME_20MS = 640  # bytes of PCM16 at 16 kHz
REALTIME_EVENTS: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def pcm16(w: np.ndarray) -> bytes:
    return (np.clip(w, -1, 1) * 32767).astype("<i2").tobytes()


def to_24k(pcm16k: bytes) -> bytes:
    x = np.frombuffer(pcm16k, "<i2").astype(np.float32) / 32768
    return pcm16(soxr.resample(x, 16000, 24000, quality="HQ"))


def wav(pcm: bytes, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, "<i2"), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def transcribe(client: TestClient, pcm: bytes, rate: int = 16000, route: str = "/transcribe") -> str:
    """The same audio as an upload (the oracle of a stream's finals)."""
    data = {"model": "whisper-1"} if route.startswith("/v1") else {}
    r = client.post(route, files={"file": ("a.wav", wav(pcm, rate), "audio/wav")}, data=data)
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


def receive(ws: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    """The next JSON message, within `timeout_s`.

    Raises:
        WebSocketDisconnect: the server closed the socket (its close code and reason).
        TimeoutError: nothing came.
    """

    async def next_message() -> Any:
        with anyio.fail_after(timeout_s):
            return await ws._send_rx.receive()  # the session's own queue (WebSocketTestSession.receive has no limit)

    message = ws.portal.call(next_message)
    if message["type"] == "websocket.close":
        raise WebSocketDisconnect(code=message.get("code", 1000), reason=message.get("reason", ""))
    return dict(json.loads(message["text"]))


def until_type(ws: Any, *types: str, timeout_s: float = 60.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages up to and including the first of one of `types`: (those before it, it)."""
    before = []
    while (m := receive(ws, timeout_s))["type"] not in types:
        before.append(m)
    return before, m


def until_closed(ws: Any, timeout_s: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
    """Every message until the server closes: (close code, messages)."""
    out = []
    try:
        while True:
            out.append(receive(ws, timeout_s))
    except WebSocketDisconnect as closed:
        return closed.code, out


def send_frames(ws: Any, pcm: bytes, frame_bytes: int = FRAME_20MS, realtime: bool = True) -> None:
    """Send `pcm` as binary frames of `frame_bytes`, each at its real-time moment (scheduled, not slept after), or
    all at once."""
    t0 = time.monotonic()
    for i in range(0, len(pcm), frame_bytes):
        ws.send_bytes(pcm[i : i + frame_bytes])
        if realtime:
            time.sleep(max(0.0, t0 + (i + frame_bytes) / 32000 - time.monotonic()))


def realtime_event(message: dict[str, Any]) -> Any:
    """The message as the official SDK's type for it (raises if it is not one of the SDK's server events)."""
    return REALTIME_EVENTS.validate_python(message)
