"""Live streaming against a real uvicorn worker on loopback (digits model): `/ws` and `/v1/realtime` (through the
official `openai` SDK), their limits, bad input and close codes. Oracles: the same server's `POST /transcribe` and
`/v1/audio/transcriptions` on the same samples, the espeak-ng text, RFC 6455 close codes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
import websockets
from openai import AsyncOpenAI

import speech
from helpers import ServerProcess, run, start_server

FRAME_20MS = 640  # bytes of PCM16 at 16 kHz
MAX_STREAMS = 8


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory, digits_model_path: Path) -> Iterator[ServerProcess]:
    """One worker (so /health describes the worker that holds the streams), small stream limits."""
    server = start_server(
        tmp_path_factory.mktemp("stream_server"),
        {
            "PARAKEET_MODEL": str(digits_model_path),
            "PARAKEET_STREAM_MAX_STREAMS": str(MAX_STREAMS),
            "PARAKEET_STREAM_IDLE_TIMEOUT_S": "3",
            "PARAKEET_STREAM_MAX_FRAME_BYTES": str(256 * 1024),
            "PARAKEET_STREAM_MAX_LAG_S": "2",
            "PARAKEET_TORCH_THREADS": "2",
        },
        workers=1,
    )
    try:
        server.wait_ready(timeout_s=120)
        yield server
    finally:
        server.stop()


def pcm16(w: np.ndarray) -> bytes:
    return (np.clip(w, -1, 1) * 32767).astype("<i2").tobytes()


def wav(pcm: bytes, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, "<i2"), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def transcribe(server: ServerProcess, pcm: bytes, rate: int = 16000, route: str = "/transcribe") -> str:
    files = {"file": ("a.wav", wav(pcm, rate), "audio/wav")}
    data = {"model": "whisper-1"} if route.startswith("/v1") else {}
    r = httpx.post(server.url + route, files=files, data=data, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


def health(server: ServerProcess) -> dict[str, Any]:
    return dict(httpx.get(server.url + "/health", timeout=10).json())


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def send_paced(ws: Any, pcm: bytes, frame_bytes: int = FRAME_20MS, realtime: bool = True) -> None:
    """Send `pcm` in frames of `frame_bytes`, each at its real-time moment (scheduled, not slept after)."""
    t0 = time.monotonic()
    for i in range(0, len(pcm), frame_bytes):
        await ws.send(pcm[i : i + frame_bytes])
        if realtime:
            due = t0 + (i + frame_bytes) / 32000
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def until_final(ws: Any, timeout_s: float = 30) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages up to and including the next final (or error): (partials, final)."""
    partials = []
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if m["type"] == "partial":
            partials.append(m)
        else:
            return partials, m


async def stream_utterance(
    server: ServerProcess, pcm: bytes, frame_bytes: int = FRAME_20MS, realtime: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    async with websockets.connect(ws_url(server, "/ws")) as ws:
        sender = asyncio.ensure_future(send_paced(ws, pcm, frame_bytes, realtime))
        received: list[dict[str, Any]] = []

        async def collect() -> None:  # partials arrive while audio is still being sent
            while True:
                received.append(json.loads(await ws.recv()))

        collector = asyncio.ensure_future(collect())
        await sender
        collector.cancel()
        await ws.send(b"__CTRL__:EOS")
        partials, final = await until_final(ws)
        return [m for m in received if m["type"] == "partial"] + partials, final


@pytest.fixture(scope="module")
def utterances() -> list[bytes]:
    texts = ["four two seven one nine", "three three eight zero", "six five", "nine one four two"]
    return [pcm16(np.concatenate([speech.speak(t), np.zeros(3200, np.float32)])) for t in texts]


# --- /ws --------------------------------------------------------------------------------------------------


def test_ws_final_equals_transcribe_with_partials_before_eos(
    stream_server: ServerProcess, utterances: list[bytes]
) -> None:
    for pcm in utterances[:2]:
        partials, final = run(stream_utterance(stream_server, pcm))
        assert final["type"] == "final", final
        assert final["text"] == transcribe(stream_server, pcm)
        assert final["audio_s"] == pytest.approx(len(pcm) / 32000, abs=0.001)
        assert final["final_ms"] >= 0 and final["compute_ms"] > 0
        assert len(pcm) / 32000 >= 1.0 and any(p["text"] for p in partials), partials
    print("partials of the last utterance:", [p["text"] for p in partials])


def test_ws_final_is_independent_of_frame_size(stream_server: ServerProcess, utterances: list[bytes]) -> None:
    pcm = utterances[0]
    finals = {n: run(stream_utterance(stream_server, pcm, n, realtime=False))[1]["text"] for n in (640, 1185, 32000)}
    assert set(finals.values()) == {transcribe(stream_server, pcm)}, finals


def test_ws_keeps_the_connection_for_the_next_utterance_and_reset_discards(
    stream_server: ServerProcess, utterances: list[bytes]
) -> None:
    a, b, c = utterances[0], utterances[1], utterances[2]

    async def scenario() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(stream_server, "/ws")) as ws:
            await send_paced(ws, a, 32000, realtime=False)
            await ws.send("__CTRL__:RESET")  # a text control frame works too
            await send_paced(ws, b, 32000, realtime=False)
            await ws.send(b"__CTRL__:EOS")
            first = (await until_final(ws))[1]
            await send_paced(ws, c, 32000, realtime=False)
            await ws.send(b"__CTRL__:EOS")
            return [first, (await until_final(ws))[1]]

    first, second = run(scenario())
    assert first["text"] == transcribe(stream_server, b)  # nothing of the discarded utterance
    assert second["text"] == transcribe(stream_server, c)


def test_ws_bad_text_frame_is_an_error_event_and_the_stream_goes_on(
    stream_server: ServerProcess, utterances: list[bytes]
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with websockets.connect(ws_url(stream_server, "/ws")) as ws:
            await ws.send('{"hello": 1}')
            error = json.loads(await ws.recv())
            await send_paced(ws, utterances[3], 32000, realtime=False)
            await ws.send(b"__CTRL__:EOS")
            return error, (await until_final(ws))[1]

    error, final = run(scenario())
    assert error["type"] == "error" and error["code"] == "invalid_message"
    assert final["text"] == transcribe(stream_server, utterances[3])


def test_ws_eos_without_audio_gives_an_empty_final(stream_server: ServerProcess) -> None:
    async def scenario() -> dict[str, Any]:
        async with websockets.connect(ws_url(stream_server, "/ws")) as ws:
            await ws.send(b"__CTRL__:EOS")
            return (await until_final(ws))[1]

    assert run(scenario()) == {
        "type": "final",
        "text": "",
        "audio_s": 0.0,
        "final_ms": 0.0,
        "queue_ms": 0.0,
        "compute_ms": 0.0,
    }


async def messages_until_closed(ws: Any, timeout_s: float = 20) -> tuple[int | None, list[dict[str, Any]]]:
    """Every message until the server closes; (close code, messages)."""
    out = []
    try:
        while True:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), out


def test_ws_frame_over_the_limit_closes_1009(stream_server: ServerProcess) -> None:
    async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
        async with websockets.connect(ws_url(stream_server, "/ws"), max_size=None) as ws:
            await ws.send(b"\0" * (256 * 1024 + 2))
            return await messages_until_closed(ws)

    code, messages = run(scenario())
    assert code == 1009
    assert messages[-1]["code"] == "message_too_big" and "262144" in messages[-1]["message"]


def test_ws_idle_stream_closes_1008_after_its_final(stream_server: ServerProcess, utterances: list[bytes]) -> None:
    async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
        async with websockets.connect(ws_url(stream_server, "/ws")) as ws:
            await send_paced(ws, utterances[2], 32000, realtime=False)
            return await messages_until_closed(ws)  # then silence: idle timeout 3 s

    code, messages = run(scenario())
    assert code == 1008
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["text"] for f in finals] == [transcribe(stream_server, utterances[2])]  # finalized, not lost
    assert messages[-1]["code"] == "idle_timeout"


def test_ws_streams_over_the_limit_are_refused_1013_and_disconnects_free_their_place(
    stream_server: ServerProcess,
) -> None:
    async def scenario() -> tuple[int | None, list[dict[str, Any]], int]:
        sockets = [await websockets.connect(ws_url(stream_server, "/ws")) for _ in range(MAX_STREAMS)]
        for ws in sockets:
            await ws.send(b"\0" * FRAME_20MS)
        open_now = health(stream_server)["streams_open"]
        extra = await websockets.connect(ws_url(stream_server, "/ws"))
        code, messages = await messages_until_closed(extra)
        for ws in sockets:
            await ws.close()
        return code, messages, open_now

    before = health(stream_server)["streams_refused"]
    code, messages, open_now = run(scenario())
    assert open_now == MAX_STREAMS
    assert code == 1013
    assert messages == [{"type": "error", "code": "too_many_streams", "message": messages[0]["message"]}]
    assert f"limit is {MAX_STREAMS}" in messages[0]["message"]
    deadline = time.monotonic() + 10
    while health(stream_server)["streams_open"] and time.monotonic() < deadline:
        time.sleep(0.1)
    h = health(stream_server)
    assert h["streams_open"] == 0 and h["streams_refused"] == before + 1


def test_ws_client_faster_than_real_time_is_throttled_and_nothing_is_lost(stream_server: ServerProcess) -> None:
    """20 s of speech pushed at once: the server reads on only as it catches up (max lag 2 s), the final is whole."""
    words = ["four two seven one nine", "three three eight", "zero five six", "one one two", "seven eight"]
    pcm = pcm16(np.concatenate([np.concatenate([speech.speak(t), np.zeros(16000, np.float32)]) for t in words * 2]))
    lags: list[float] = []

    async def scenario() -> dict[str, Any]:
        async with websockets.connect(ws_url(stream_server, "/ws")) as ws:
            sender = asyncio.ensure_future(send_paced(ws, pcm, 3200, realtime=False))
            while not sender.done():
                lags.append((await asyncio.to_thread(health, stream_server))["max_stream_lag_s"])
                await asyncio.sleep(0.05)
            await ws.send(b"__CTRL__:EOS")
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if m["type"] != "partial":
                    return m

    final = run(scenario())
    print(f"{len(pcm) / 32000:.1f} s pushed at once; stream lag seen by /health: max {max(lags):.2f} s")
    assert final["text"] == transcribe(stream_server, pcm)
    assert max(lags) <= 2.0 + 0.1 + 0.001  # the limit plus one message's audio


def test_ws_eight_concurrent_streams_share_step_batches(stream_server: ServerProcess, utterances: list[bytes]) -> None:
    pcms = [utterances[i % len(utterances)] for i in range(MAX_STREAMS)]
    before = health(stream_server)

    async def scenario() -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        return list(await asyncio.gather(*(stream_utterance(stream_server, p) for p in pcms)))

    results = run(scenario())
    after = health(stream_server)
    steps = after["stream_steps"] - before["stream_steps"]
    assert after["stream_steps"] <= 1000  # /health's mean covers the last 1000 steps: all of them here
    items = after["mean_step_batch"] * after["stream_steps"] - (before["mean_step_batch"] or 0) * before["stream_steps"]
    print(f"8 concurrent streams: {steps} steps, mean step batch {items / steps:.2f}")
    assert [final["text"] for _, final in results] == [transcribe(stream_server, p) for p in pcms]
    assert items / steps > 1


def test_ws_vad_finalizes_each_utterance_at_a_pause(stream_server: ServerProcess) -> None:
    texts = ["four two seven", "one nine"]
    pause = np.zeros(int(1.0 * 16000), np.float32)
    parts = [pause[:8000], speech.speak(texts[0]), pause, speech.speak(texts[1]), pause]
    pcm = pcm16(np.concatenate(parts))

    async def scenario() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(stream_server, "/ws?vad=1")) as ws:
            sender = asyncio.ensure_future(send_paced(ws, pcm, 3200))
            finals: list[dict[str, Any]] = []
            while len(finals) < 2:
                m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if m["type"] == "final":
                    finals.append(m)
            await sender
            return finals

    finals = run(scenario())
    assert [f["text"] for f in finals] == texts
    second_start = (8000 + len(parts[1]) + len(pause)) / 16000
    assert finals[1]["start_s"] == pytest.approx(second_start - 0.3, abs=0.3)


def test_ws_word_timestamps_on_request(stream_server: ServerProcess, utterances: list[bytes]) -> None:
    async def scenario() -> dict[str, Any]:
        async with websockets.connect(ws_url(stream_server, "/ws?timestamps=1")) as ws:
            await send_paced(ws, utterances[0], 32000, realtime=False)
            await ws.send(b"__CTRL__:EOS")
            return (await until_final(ws))[1]

    final = run(scenario())
    assert [w["word"] for w in final["words"]] == final["text"].split()
    assert all(0 <= w["start"] <= w["end"] <= final["audio_s"] for w in final["words"])


def test_status_route_answers_ok(stream_server: ServerProcess) -> None:
    r = httpx.get(stream_server.url + "/status")
    assert (r.status_code, r.text) == (200, "ok")


# --- /v1/realtime through the official SDK -------------------------------------------------------------------


def realtime_client(server: ServerProcess) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


MANUAL = {
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}},
}


def to_24k(pcm16k: bytes) -> bytes:
    x = np.frombuffer(pcm16k, "<i2").astype(np.float32) / 32768
    return pcm16(soxr.resample(x, 16000, 24000, quality="HQ"))


def test_realtime_manual_commit_equals_audio_transcriptions(
    stream_server: ServerProcess, utterances: list[bytes]
) -> None:
    pcm24 = to_24k(utterances[0])

    async def scenario() -> list[Any]:
        events = []
        async with realtime_client(stream_server).realtime.connect(
            model="parakeet-tdt-0.6b-v3", extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(session=MANUAL)  # type: ignore[arg-type]
            for i in range(0, len(pcm24), 4800):  # 100 ms events
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 4800]).decode())
            await conn.input_audio_buffer.commit()
            async for event in conn:
                events.append(event)
                if event.type == "conversation.item.done":
                    return events
        return events

    events = run(scenario())
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"]
    assert events[1].session.audio.input.turn_detection is None
    completed = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    committed = next(e for e in events if e.type == "input_audio_buffer.committed")
    assert completed.item_id == committed.item_id
    assert completed.transcript == transcribe(stream_server, pcm24, 24000, "/v1/audio/transcriptions")
    assert completed.usage.type == "duration" and completed.usage.seconds == pytest.approx(len(pcm24) / 48000, abs=0.01)
    assert (
        types.index("input_audio_buffer.committed")
        < types.index("conversation.item.added")
        < types.index("conversation.item.input_audio_transcription.completed")
        < types.index("conversation.item.done")
    )


def test_realtime_server_vad_gives_one_item_per_utterance(stream_server: ServerProcess) -> None:
    texts = ["four two seven", "one nine"]
    pause = np.zeros(16000, np.float32)
    parts = [pause[:8000], speech.speak(texts[0]), pause, speech.speak(texts[1]), pause]
    pcm24 = to_24k(pcm16(np.concatenate(parts)))
    starts_ms = [500, (8000 + len(parts[1]) + len(pause)) / 16]
    ends_ms = [(8000 + len(parts[1])) / 16, (8000 + len(parts[1]) + len(pause) + len(parts[3])) / 16]

    async def scenario() -> list[Any]:
        events: list[Any] = []
        async with realtime_client(stream_server).realtime.connect(
            model="parakeet-tdt-0.6b-v3", extra_query={"intent": "transcription"}
        ) as conn:  # the default session: 24 kHz PCM, server VAD

            async def send() -> None:
                t0 = time.monotonic()
                for i in range(0, len(pcm24), 4800):
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 4800]).decode())
                    await asyncio.sleep(max(0.0, t0 + (i + 4800) / 48000 - time.monotonic()))

            sender = asyncio.ensure_future(send())
            async for event in conn:
                events.append(event)
                if sum(e.type == "conversation.item.input_audio_transcription.completed" for e in events) == 2:
                    break
            await sender
        return events

    events = run(asyncio.wait_for(scenario(), 60))
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    assert [c.transcript for c in completed] == texts
    assert [s.item_id for s in started] == [s.item_id for s in stopped] == [c.item_id for c in completed]
    print("speech_started ms", [s.audio_start_ms for s in started], "true", starts_ms)
    print("speech_stopped ms", [s.audio_end_ms for s in stopped], "true", ends_ms)
    for s, true_ms in zip(started, starts_ms, strict=True):
        assert abs(s.audio_start_ms - (true_ms - 300)) <= 300  # the item includes 300 ms of prefix padding
    for s, true_ms in zip(stopped, ends_ms, strict=True):
        assert abs(s.audio_end_ms - true_ms) <= 400
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert all(d.item_id in {c.item_id for c in completed} for d in deltas)


def test_realtime_bad_events_get_error_events_and_the_session_goes_on(
    stream_server: ServerProcess, utterances: list[bytes]
) -> None:
    pcm24 = to_24k(utterances[2])

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        errors = []
        async with websockets.connect(ws_url(stream_server, "/v1/realtime?intent=transcription")) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", "session": MANUAL}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            bad = [
                "{not json",
                json.dumps({"type": "no.such.event", "event_id": "evt_1"}),
                json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}),
                json.dumps({"type": "input_audio_buffer.commit"}),  # 5 ms buffered (below): too small
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "transcription",
                            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}},
                        },
                    }
                ),  # noqa: E501
            ]
            for message in bad:
                if "commit" in message:  # an append is not acknowledged
                    await ws.send(
                        json.dumps(
                            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm24[:240]).decode()}
                        )
                    )  # noqa: E501
                await ws.send(message)
                errors.append(json.loads(await ws.recv()))
            await ws.send(b"\x00\x01")  # binary frames are not part of the protocol
            errors.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm24).decode()}))
            await ws.send(json.dumps({"type": "response.create"}))  # the older clients' way to commit
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if m["type"] == "conversation.item.input_audio_transcription.completed":
                    return errors, m

    errors, completed = run(scenario())
    assert all(e["type"] == "error" for e in errors), errors
    codes = [e["error"]["code"] for e in errors]
    assert codes == [
        "invalid_json",
        "unknown_event",
        "invalid_base64",
        "input_audio_buffer_commit_empty",
        "invalid_value",
        "invalid_message",
    ]
    assert errors[1]["error"]["event_id"] == "evt_1"
    assert "at least 100ms" in errors[3]["error"]["message"] and "5.00ms" in errors[3]["error"]["message"]
    assert "44100" in errors[4]["error"]["message"]
    assert completed["transcript"] == transcribe(stream_server, pcm24, 24000, "/v1/audio/transcriptions")


def test_realtime_beta_session_update_and_g711_ulaw(stream_server: ServerProcess, utterances: list[bytes]) -> None:
    """The older `transcription_session.update` shape with 8 kHz mu-law audio: same text as the same mu-law file
    uploaded to /transcribe (both decode G.711 to the same 16-bit values and resample with soxr HQ)."""
    x = np.frombuffer(utterances[0], "<i2").astype(np.float32) / 32768
    x8 = soxr.resample(x, 16000, 8000, quality="HQ")
    buf = io.BytesIO()
    sf.write(buf, x8, 8000, format="WAV", subtype="ULAW")
    ulaw_wav = buf.getvalue()
    with sf.SoundFile(io.BytesIO(ulaw_wav)) as f:
        assert f.subtype == "ULAW"
    raw_ulaw = ulaw_wav[ulaw_wav.index(b"data") + 8 :]

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with websockets.connect(ws_url(stream_server, "/v1/realtime")) as ws:
            await ws.recv()
            update = {"input_audio_format": "g711_ulaw", "turn_detection": None}
            await ws.send(json.dumps({"type": "transcription_session.update", "session": update}))
            updated = json.loads(await ws.recv())
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(raw_ulaw).decode()})
            )
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if m["type"] == "conversation.item.input_audio_transcription.completed":
                    return updated, m

    updated, completed = run(scenario())
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "g711_ulaw" and updated["session"]["turn_detection"] is None
    r = httpx.post(stream_server.url + "/transcribe", files={"file": ("a.wav", ulaw_wav, "audio/wav")}, timeout=60)
    assert completed["transcript"] == r.json()["text"]
    assert jiwer.wer("four two seven one nine", completed["transcript"]) <= 0.2


def test_sigterm_finalizes_open_streams_then_closes_1001(
    tmp_path: Path, digits_model_path: Path, utterances: list[bytes]
) -> None:
    server = start_server(tmp_path, {"PARAKEET_MODEL": str(digits_model_path)}, workers=1)
    try:
        server.wait_ready(timeout_s=120)
        expected = transcribe(server, utterances[0])

        async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
            async with websockets.connect(ws_url(server, "/ws")) as ws:
                await send_paced(ws, utterances[0], 32000, realtime=False)  # no EOS: the utterance is open
                await asyncio.sleep(0.3)
                server.proc.send_signal(signal.SIGTERM)
                return await messages_until_closed(ws)

        code, messages = run(scenario())
        assert code == 1001
        assert [m["text"] for m in messages if m["type"] == "final"] == [expected]
        assert messages[-1]["code"] == "shutting_down"
        # uvicorn re-raises the signal after a graceful shutdown (uvicorn/server.py, capture_signals)
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
    finally:
        server.stop()


def test_session_length_limit_and_api_keys(tmp_path: Path, digits_model_path: Path, utterances: list[bytes]) -> None:
    """With API keys a socket needs the key (the SDK sends `Authorization: Bearer`); a stream past
    PARAKEET_STREAM_MAX_SESSION_S gets the final of its open utterance, then 1008."""
    env = {"PARAKEET_MODEL": str(digits_model_path), "PARAKEET_STREAM_MAX_SESSION_S": "2", "PARAKEET_API_KEYS": "k1"}
    server = start_server(tmp_path, env, workers=1)
    try:
        server.wait_ready(timeout_s=120)
        pcm = utterances[1] + utterances[2]  # about 3.5 s: the stream outlives its 2 s limit while sending

        async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(ws_url(server, "/ws"))
            assert refused.value.response.status_code == 403  # closed before the handshake: 1008 in ASGI terms
            headers = {"Authorization": "Bearer k1"}
            async with websockets.connect(ws_url(server, "/ws"), additional_headers=headers) as ws:
                sender = asyncio.ensure_future(send_paced(ws, pcm))
                code, messages = await messages_until_closed(ws)
                sender.cancel()
                return code, messages

        code, messages = run(scenario())
        assert code == 1008
        assert messages[-1]["code"] == "session_too_long" and "2 s" in messages[-1]["message"]
        finals = [m for m in messages if m["type"] == "final"]
        assert len(finals) == 1 and 1.5 <= finals[0]["audio_s"] <= 3.6 and finals[0]["text"]
    finally:
        server.stop()


def test_stream_metrics_are_scraped(stream_server: ServerProcess, utterances: list[bytes]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    run(stream_utterance(stream_server, utterances[1], 32000, realtime=False))
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(httpx.get(stream_server.url + "/metrics").text)
        for s in family.samples
    }
    assert samples["parakeet_stream_step_batch_size_count"] >= 1
    assert samples["parakeet_stream_step_seconds_count"] == samples["parakeet_stream_step_batch_size_count"]
    assert samples["parakeet_stream_audio_seconds_total"] >= len(utterances[1]) / 32000
    assert samples["parakeet_streams_open"] == 0


def test_realtime_deltas_stream_whole_words_of_the_item_while_it_is_spoken(stream_server: ServerProcess) -> None:
    words = "four two seven one nine three eight zero five six"
    pcm24 = to_24k(pcm16(speech.speak(words)))

    async def scenario() -> tuple[list[Any], list[Any]]:
        events: list[Any] = []
        async with realtime_client(stream_server).realtime.connect(
            model="parakeet-tdt-0.6b-v3", extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(session=MANUAL)  # type: ignore[arg-type]

            async def collect() -> None:
                async for event in conn:
                    events.append(event)
                    if event.type == "conversation.item.done":
                        return

            collector = asyncio.ensure_future(collect())
            t0 = time.monotonic()
            for i in range(0, len(pcm24), 960):  # 20 ms events at real time
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 960]).decode())
                await asyncio.sleep(max(0.0, t0 + (i + 960) / 48000 - time.monotonic()))
            await asyncio.sleep(0.3)
            spoken = len(events)
            await conn.input_audio_buffer.commit()
            await asyncio.wait_for(collector, 30)
        return events[:spoken], events[spoken:]

    before, after = run(scenario())
    deltas = [e for e in before if e.type == "conversation.item.input_audio_transcription.delta"]
    completed = next(e for e in after if e.type == "conversation.item.input_audio_transcription.completed")
    print("deltas while speaking:", [d.delta for d in deltas], "completed:", completed.transcript)
    assert deltas, "no delta while the item was being spoken"
    assert {d.item_id for d in deltas} == {completed.item_id}
    streamed = "".join(d.delta for d in deltas).split()
    assert streamed and set(streamed) <= set(speech.DIGIT_WORDS)  # whole words only, never a cut-off one
    assert completed.transcript == transcribe(stream_server, pcm24, 24000, "/v1/audio/transcriptions")
