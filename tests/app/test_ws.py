"""`WS /ws` in-process against the digits app (conftest.digits_client: 8 streams, 3 s idle, 256 KiB messages, 2 s of
lag): finals equal `POST /transcribe` on the same samples, whatever the frame size; partials while speaking; RESET;
bad input; every limit and its close code (RFC 6455); backpressure without loss; concurrent streams sharing steps;
VAD at pauses; word timestamps; the session limit and API keys (an app of their own). Oracles: the same app's
`POST /transcribe`, the espeak-ng text."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.support import speech

from helpers import DIGITS_APP_SETTINGS, digits_app, wait_until
from streams import FRAME_20MS, pcm16, receive, send_frames, transcribe, until_closed, until_type

MAX_STREAMS = DIGITS_APP_SETTINGS["stream_max_streams"]


@pytest.fixture(scope="module")
def utterances() -> list[bytes]:
    texts = ["four two seven one nine", "three three eight zero", "six five", "nine one four two"]
    return [pcm16(np.concatenate([speech.speak(t), np.zeros(3200, np.float32)])) for t in texts]


def stream_utterance(
    client: TestClient, pcm: bytes, frame_bytes: int = FRAME_20MS, realtime: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One utterance over `/ws`, then EOS: (every partial, the final). Partials are read while audio is sent."""
    with client.websocket_connect("/ws") as ws:
        received: list[dict[str, Any]] = []
        done = threading.Event()

        def collect() -> None:  # partials arrive while audio is still being sent
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    received.append(receive(ws, 0.2))

        reader = threading.Thread(target=collect)
        reader.start()
        send_frames(ws, pcm, frame_bytes, realtime)
        done.set()
        reader.join()
        ws.send_bytes(b"__CTRL__:EOS")
        before, final = until_type(ws, "final", "error")
        return [m for m in received + before if m["type"] == "partial"], final


def health(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/health").json())


def test_ws_final_equals_transcribe_with_partials_before_eos(
    backend_client: TestClient, utterances: list[bytes]
) -> None:
    pcm = utterances[0]
    partials, final = stream_utterance(backend_client, pcm)
    assert final["type"] == "final", final
    assert final["text"] == transcribe(backend_client, pcm)
    assert final["audio_s"] == pytest.approx(len(pcm) / 32000, abs=0.001)
    assert final["final_ms"] >= 0 and final["compute_ms"] > 0
    assert any(p["text"] for p in partials), partials
    print("partials:", [p["text"] for p in partials])


def test_ws_final_is_independent_of_frame_size(digits_client: TestClient, utterances: list[bytes]) -> None:
    pcm = utterances[1]
    finals = {n: stream_utterance(digits_client, pcm, n, realtime=False)[1]["text"] for n in (640, 1185, 32000)}
    assert set(finals.values()) == {transcribe(digits_client, pcm)}, finals


def test_ws_keeps_the_connection_for_the_next_utterance_and_reset_discards(
    digits_client: TestClient, utterances: list[bytes]
) -> None:
    a, b, c = utterances[0], utterances[1], utterances[2]
    with digits_client.websocket_connect("/ws") as ws:
        send_frames(ws, a, 32000, realtime=False)
        ws.send_text("__CTRL__:RESET")  # a text control frame works too
        send_frames(ws, b, 32000, realtime=False)
        ws.send_bytes(b"__CTRL__:EOS")
        first = until_type(ws, "final")[1]
        send_frames(ws, c, 32000, realtime=False)
        ws.send_bytes(b"__CTRL__:EOS")
        second = until_type(ws, "final")[1]
    assert first["text"] == transcribe(digits_client, b)  # nothing of the discarded utterance
    assert second["text"] == transcribe(digits_client, c)


def test_ws_bad_text_frame_is_an_error_event_and_the_stream_goes_on(
    digits_client: TestClient, utterances: list[bytes]
) -> None:
    with digits_client.websocket_connect("/ws") as ws:
        ws.send_text('{"hello": 1}')
        error = receive(ws)
        send_frames(ws, utterances[3], 32000, realtime=False)
        ws.send_bytes(b"__CTRL__:EOS")
        final = until_type(ws, "final")[1]
    assert error["type"] == "error" and error["code"] == "invalid_message"
    assert final["text"] == transcribe(digits_client, utterances[3])


def test_ws_eos_without_audio_gives_an_empty_final(digits_client: TestClient) -> None:
    with digits_client.websocket_connect("/ws") as ws:
        ws.send_bytes(b"__CTRL__:EOS")
        final = until_type(ws, "final")[1]
    assert final == {"type": "final", "text": "", "audio_s": 0.0, "final_ms": 0.0, "queue_ms": 0.0, "compute_ms": 0.0}


def test_ws_frame_over_the_limit_closes_1009(digits_client: TestClient) -> None:
    with digits_client.websocket_connect("/ws") as ws:
        ws.send_bytes(b"\0" * (256 * 1024 + 2))
        code, messages = until_closed(ws)
    assert code == 1009
    assert messages[-1]["code"] == "message_too_big" and "262144" in messages[-1]["message"]


def test_ws_idle_stream_closes_1008_after_its_final(digits_client: TestClient, utterances: list[bytes]) -> None:
    with digits_client.websocket_connect("/ws") as ws:
        send_frames(ws, utterances[2], 32000, realtime=False)
        code, messages = until_closed(ws)  # then silence: idle timeout 3 s
    assert code == 1008
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["text"] for f in finals] == [transcribe(digits_client, utterances[2])]  # finalized, not lost
    assert messages[-1]["code"] == "idle_timeout"


def test_ws_streams_over_the_limit_are_refused_1013_and_disconnects_free_their_place(
    digits_client: TestClient,
) -> None:
    before = health(digits_client)["streams_refused"]
    sockets = [digits_client.websocket_connect("/ws").__enter__() for _ in range(MAX_STREAMS)]
    try:
        for ws in sockets:
            ws.send_bytes(b"\0" * FRAME_20MS)
        open_now = health(digits_client)["streams_open"]
        with digits_client.websocket_connect("/ws") as extra:
            code, messages = until_closed(extra)
    finally:
        for ws in sockets:
            ws.__exit__(None, None, None)
    assert open_now == MAX_STREAMS and code == 1013
    assert messages == [{"type": "error", "code": "too_many_streams", "message": messages[0]["message"]}]
    assert f"limit is {MAX_STREAMS}" in messages[0]["message"]
    wait_until(lambda: health(digits_client)["streams_open"] == 0, what="the closed streams to leave")
    assert health(digits_client)["streams_refused"] == before + 1


def test_ws_client_faster_than_real_time_is_throttled_and_nothing_is_lost(digits_client: TestClient) -> None:
    """20 s of speech pushed at once: the server reads on only as it catches up (max lag 2 s), the final is whole."""
    words = ["four two seven one nine", "three three eight", "zero five six", "one one two", "seven eight"]
    pcm = pcm16(np.concatenate([np.concatenate([speech.speak(t), np.zeros(16000, np.float32)]) for t in words * 2]))
    lags: list[float] = []
    with digits_client.websocket_connect("/ws") as ws:
        sender = threading.Thread(target=send_frames, args=(ws, pcm, 3200, False))
        sender.start()
        while sender.is_alive():
            lags.append(health(digits_client)["max_stream_lag_s"])
        sender.join()
        ws.send_bytes(b"__CTRL__:EOS")
        final = until_type(ws, "final")[1]
    print(f"{len(pcm) / 32000:.1f} s pushed at once; stream lag seen by /health: max {max(lags):.2f} s")
    assert final["text"] == transcribe(digits_client, pcm)
    assert max(lags) <= 2.0 + 0.1 + 0.001  # the limit plus one message's audio


def test_ws_eight_concurrent_streams_share_step_batches(digits_client: TestClient, utterances: list[bytes]) -> None:
    pcms = [utterances[i % len(utterances)] for i in range(MAX_STREAMS)]
    before = health(digits_client)
    with ThreadPoolExecutor(MAX_STREAMS) as pool:
        results = list(pool.map(lambda p: stream_utterance(digits_client, p), pcms))
    after = health(digits_client)
    steps = after["stream_steps"] - before["stream_steps"]
    assert after["stream_steps"] <= 1000  # /health's mean covers the last 1000 steps: all of them here
    items = after["mean_step_batch"] * after["stream_steps"] - (before["mean_step_batch"] or 0) * before["stream_steps"]
    print(f"8 concurrent streams: {steps} steps, mean step batch {items / steps:.2f}")
    assert [final["text"] for _, final in results] == [transcribe(digits_client, p) for p in pcms]
    assert items / steps > 1


def test_ws_vad_finalizes_each_utterance_at_a_pause(backend_client: TestClient) -> None:
    texts = ["four two seven", "one nine"]
    pause = np.zeros(int(1.0 * 16000), np.float32)
    parts = [pause[:8000], speech.speak(texts[0]), pause, speech.speak(texts[1]), pause]
    with backend_client.websocket_connect("/ws?vad=1") as ws:
        send_frames(ws, pcm16(np.concatenate(parts)), 3200, realtime=False)
        finals = [until_type(ws, "final")[1] for _ in texts]
    assert [f["text"] for f in finals] == texts
    second_start = (8000 + len(parts[1]) + len(pause)) / 16000
    assert finals[1]["start_s"] == pytest.approx(second_start - 0.3, abs=0.3)


def test_ws_vad_knobs_are_query_options(digits_client: TestClient) -> None:
    """A silence shorter than the query's `vad_silence_ms` does not end the utterance: one final, both parts."""
    texts = ["four two seven", "one nine"]
    gap = np.zeros(int(0.8 * 16000), np.float32)
    parts = [gap[:8000], speech.speak(texts[0]), gap, speech.speak(texts[1]), np.zeros(16000 * 3, np.float32)]
    with digits_client.websocket_connect("/ws?vad=1&vad_silence_ms=1500") as ws:
        send_frames(ws, pcm16(np.concatenate(parts)), 3200, realtime=False)
        final = until_type(ws, "final")[1]
    assert final["text"] == " ".join(texts)
    with pytest.raises(WebSocketDisconnect) as refused, digits_client.websocket_connect("/ws?vad=1&vad_threshold=2"):
        pass
    assert refused.value.code == 1008  # an invalid query value: policy violation


def test_ws_word_timestamps_on_request(backend_client: TestClient, utterances: list[bytes]) -> None:
    with backend_client.websocket_connect("/ws?timestamps=1") as ws:
        send_frames(ws, utterances[0], 32000, realtime=False)
        ws.send_bytes(b"__CTRL__:EOS")
        final = until_type(ws, "final")[1]
    assert [w["word"] for w in final["words"]] == final["text"].split()
    assert all(0 <= w["start"] <= w["end"] <= final["audio_s"] for w in final["words"])


def test_status_route_answers_ok(digits_client: TestClient) -> None:
    r = digits_client.get("/status")
    assert (r.status_code, r.text) == (200, "ok")


def test_stream_metrics_are_scraped(digits_client: TestClient, utterances: list[bytes]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict[str, float]:
        text = digits_client.get("/metrics").text
        return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    stream_utterance(digits_client, utterances[1], 32000, realtime=False)
    after = samples()
    assert after["parakeet_stream_step_batch_size_count"] > before.get("parakeet_stream_step_batch_size_count", 0)
    assert after["parakeet_stream_step_seconds_count"] == after["parakeet_stream_step_batch_size_count"]
    grown = after["parakeet_stream_audio_seconds_total"] - before.get("parakeet_stream_audio_seconds_total", 0)
    assert grown == pytest.approx(len(utterances[1]) / 32000, abs=0.01)
    assert after["parakeet_streams_open"] == 0


@pytest.fixture(scope="module")
def keyed_client(digits_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[TestClient]:
    with digits_app(digits_engine, silero_vad, digits_model_path, stream_max_session_s=2, api_keys="k1") as client:
        yield client


def test_session_length_limit_and_api_keys(keyed_client: TestClient, utterances: list[bytes]) -> None:
    """With API keys a socket needs the key (refused before the handshake: HTTP 403 on a real socket, tested in
    tests/browser); a stream past its longest session (Tuning.stream_max_session_s) gets the final of its open
    utterance, then 1008."""
    with pytest.raises(WebSocketDisconnect) as refused, keyed_client.websocket_connect("/ws"):
        pass
    assert refused.value.code == 1008
    pcm = utterances[1] + utterances[2]  # about 3.5 s: the stream outlives its 2 s limit while sending
    with keyed_client.websocket_connect("/ws", headers={"Authorization": "Bearer k1"}) as ws:
        sender = threading.Thread(target=_send_until_closed, args=(ws, pcm))
        sender.start()
        code, messages = until_closed(ws)
        sender.join()
    assert code == 1008
    assert messages[-1]["code"] == "session_too_long" and "2 s" in messages[-1]["message"]
    finals = [m for m in messages if m["type"] == "final"]
    assert len(finals) == 1 and 1.5 <= finals[0]["audio_s"] <= 3.6 and finals[0]["text"]


def _send_until_closed(ws: Any, pcm: bytes) -> None:
    try:
        send_frames(ws, pcm)
    except Exception:  # noqa: BLE001 - the server closed the stream at its limit while we were sending
        return
