"""`WS /v1/realtime` (OpenAI's Realtime API, transcription sessions) in-process against the digits app. Every server
event is validated as the official `openai` SDK's own type for it (the SDK's client over a real socket:
tests/e2e/test_streams_e2e.py). Oracles: the same app's `/v1/audio/transcriptions` and `/transcribe` on the same
audio, the SDK's types, the espeak-ng text."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import jiwer
import numpy as np
import pytest
import soundfile as sf
import soxr
from starlette.testclient import TestClient

from tests.support import speech

from streams import pcm16, realtime_event, receive, to_24k, transcribe

URL = "/v1/realtime?intent=transcription"
MANUAL = {
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}},
}


@pytest.fixture(scope="module")
def utterances() -> list[bytes]:
    texts = ["four two seven one nine", "three three eight zero", "six five"]
    return [pcm16(np.concatenate([speech.speak(t), np.zeros(3200, np.float32)])) for t in texts]


def append(ws: Any, pcm: bytes) -> None:
    ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))


def events_until(ws: Any, kind: str, count: int = 1, timeout_s: float = 60) -> list[Any]:
    """Server events (as the SDK's types) up to the `count`-th of `kind`."""
    events: list[Any] = []
    while sum(e.type == kind for e in events) < count:
        events.append(realtime_event(receive(ws, timeout_s)))
    return events


def test_realtime_manual_commit_equals_audio_transcriptions(
    backend_client: TestClient, utterances: list[bytes]
) -> None:
    pcm24 = to_24k(utterances[0])
    with backend_client.websocket_connect(URL, subprotocols=["realtime"]) as ws:
        assert ws.accepted_subprotocol == "realtime"
        created = realtime_event(receive(ws))
        ws.send_text(json.dumps({"type": "session.update", "session": MANUAL}))
        updated = realtime_event(receive(ws))
        for i in range(0, len(pcm24), 4800):  # 100 ms events
            append(ws, pcm24[i : i + 4800])
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        events = events_until(ws, "conversation.item.done")
    assert created.type == "session.created" and created.session.audio.input.turn_detection.type == "server_vad"
    assert updated.type == "session.updated" and updated.session.audio.input.turn_detection is None
    types = [e.type for e in events]
    completed = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    committed = next(e for e in events if e.type == "input_audio_buffer.committed")
    done = events[-1]
    assert completed.item_id == committed.item_id == done.item.id
    assert completed.transcript == transcribe(backend_client, pcm24, 24000, "/v1/audio/transcriptions")
    assert done.item.content[0].transcript == completed.transcript
    assert completed.usage.type == "duration" and completed.usage.seconds == pytest.approx(len(pcm24) / 48000, abs=0.01)
    assert (
        types.index("input_audio_buffer.committed")
        < types.index("conversation.item.added")
        < types.index("conversation.item.input_audio_transcription.completed")
        < types.index("conversation.item.done")
    )


def test_realtime_server_vad_gives_one_item_per_utterance(backend_client: TestClient) -> None:
    texts = ["four two seven", "one nine"]
    pause = np.zeros(16000, np.float32)
    parts = [pause[:8000], speech.speak(texts[0]), pause, speech.speak(texts[1]), pause]
    pcm24 = to_24k(pcm16(np.concatenate(parts)))
    starts_ms = [500, (8000 + len(parts[1]) + len(pause)) / 16]
    ends_ms = [(8000 + len(parts[1])) / 16, (8000 + len(parts[1]) + len(pause) + len(parts[3])) / 16]
    with backend_client.websocket_connect(URL) as ws:  # the default session: 24 kHz PCM, server VAD
        receive(ws)
        for i in range(0, len(pcm24), 4800):
            append(ws, pcm24[i : i + 4800])
        events = events_until(ws, "conversation.item.input_audio_transcription.completed", 2)
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
    digits_client: TestClient, utterances: list[bytes]
) -> None:
    pcm24 = to_24k(utterances[2])
    rate_44k = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}}
    bad_rate = {"type": "session.update", "session": rate_44k}
    bad = ["{not json", json.dumps({"type": "no.such.event", "event_id": "evt_1"}),
           json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}),
           json.dumps({"type": "input_audio_buffer.commit"}),  # 5 ms buffered (below): too small
           json.dumps(bad_rate)]  # fmt: skip
    errors = []
    with digits_client.websocket_connect(URL) as ws:
        assert receive(ws)["type"] == "session.created"
        ws.send_text(json.dumps({"type": "session.update", "session": MANUAL}))
        assert receive(ws)["type"] == "session.updated"
        for message in bad:
            if "commit" in message:  # an append is not acknowledged
                append(ws, pcm24[:240])
            ws.send_text(message)
            errors.append(realtime_event(receive(ws)))
        ws.send_bytes(b"\x00\x01")  # binary frames are not part of the protocol
        errors.append(realtime_event(receive(ws)))
        ws.send_text(json.dumps({"type": "input_audio_buffer.clear"}))
        assert realtime_event(receive(ws)).type == "input_audio_buffer.cleared"
        append(ws, pcm24)
        ws.send_text(json.dumps({"type": "response.create"}))  # the older clients' way to commit
        completed = events_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    assert all(e.type == "error" for e in errors), errors
    assert [e.error.code for e in errors] == [
        "invalid_json", "unknown_event", "invalid_base64", "input_audio_buffer_commit_empty", "invalid_value",
        "invalid_message",
    ]  # fmt: skip
    assert errors[1].error.event_id == "evt_1"
    assert "at least 100ms" in errors[3].error.message and "5.00ms" in errors[3].error.message
    assert "44100" in errors[4].error.message and errors[4].error.param == "session.audio.input.format.rate"
    assert completed.transcript == transcribe(digits_client, pcm24, 24000, "/v1/audio/transcriptions")


def test_realtime_beta_session_update_and_g711_ulaw(digits_client: TestClient, utterances: list[bytes]) -> None:
    """The older `transcription_session.update` shape with 8 kHz mu-law audio: same text as the same mu-law file
    uploaded to /transcribe (both decode G.711 to the same 16-bit values and resample with soxr HQ)."""
    x = np.frombuffer(utterances[0], "<i2").astype(np.float32) / 32768
    buf = io.BytesIO()
    sf.write(buf, soxr.resample(x, 16000, 8000, quality="HQ"), 8000, format="WAV", subtype="ULAW")
    ulaw_wav = buf.getvalue()
    at = ulaw_wav.index(b"data")
    raw_ulaw = ulaw_wav[at + 8 : at + 8 + int.from_bytes(ulaw_wav[at + 4 : at + 8], "little")]
    with digits_client.websocket_connect("/v1/realtime") as ws:
        receive(ws)
        update = {"input_audio_format": "g711_ulaw", "turn_detection": None}
        ws.send_text(json.dumps({"type": "transcription_session.update", "session": update}))
        updated = receive(ws)
        append(ws, raw_ulaw)
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        completed = events_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "g711_ulaw" and updated["session"]["turn_detection"] is None
    r = digits_client.post("/transcribe", files={"file": ("a.wav", ulaw_wav, "audio/wav")})
    assert completed.transcript == r.json()["text"]
    assert jiwer.wer("four two seven one nine", completed.transcript) <= 0.2


def test_realtime_a_new_format_after_a_commit_still_completes_the_committed_item(
    digits_client: TestClient, utterances: list[bytes]
) -> None:
    """Changing the format starts a new, empty buffer; the item committed before it still gets its transcript."""
    pcm24 = to_24k(utterances[1])
    with digits_client.websocket_connect(URL) as ws:
        receive(ws)
        ws.send_text(json.dumps({"type": "session.update", "session": MANUAL}))
        receive(ws)
        append(ws, pcm24)
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        g711 = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
        ws.send_text(json.dumps({"type": "session.update", "session": g711}))
        events = events_until(ws, "conversation.item.input_audio_transcription.completed")
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.audio.input.format.type == "audio/pcmu"
    assert events[-1].transcript == transcribe(digits_client, pcm24, 24000, "/v1/audio/transcriptions")


def test_realtime_deltas_stream_whole_words_of_the_item_while_it_is_spoken(digits_client: TestClient) -> None:
    words = "four two seven one nine three eight zero five six"
    pcm24 = to_24k(pcm16(speech.speak(words)))
    with digits_client.websocket_connect(URL) as ws:
        receive(ws)
        ws.send_text(json.dumps({"type": "session.update", "session": MANUAL}))
        receive(ws)
        t0 = time.monotonic()
        for i in range(0, len(pcm24), 960):  # 20 ms events at real time
            append(ws, pcm24[i : i + 960])
            time.sleep(max(0.0, t0 + (i + 960) / 48000 - time.monotonic()))
        before = events_until(ws, "conversation.item.input_audio_transcription.delta")  # at least one, unasked
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        after = events_until(ws, "conversation.item.done")
    deltas = [e for e in before + after if e.type == "conversation.item.input_audio_transcription.delta"]
    spoken = [e for e in before if e.type == "conversation.item.input_audio_transcription.delta"]
    committed = next(e for e in after if e.type == "input_audio_buffer.committed")
    completed = next(e for e in after if e.type == "conversation.item.input_audio_transcription.completed")
    print("deltas:", [d.delta for d in deltas], "completed:", completed.transcript)
    assert spoken  # deltas came while the item was spoken, before its commit
    assert {d.item_id for d in deltas} == {completed.item_id} == {committed.item_id}
    streamed = "".join(d.delta for d in deltas).split()
    assert streamed and set(streamed) <= set(speech.DIGIT_WORDS)  # whole words only, never a cut-off one
    assert completed.transcript == transcribe(digits_client, pcm24, 24000, "/v1/audio/transcriptions")
