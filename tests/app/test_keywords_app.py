"""Key phrases through the HTTP APIs, in-process against the digits app: `POST /transcribe` (multipart `keywords`,
repeatable or comma lists, and `keyword_weight`; JSON `keywords`), OpenAI's `keywords[]` through the official SDK's
`extra_body`; each boosts exactly what the engine boosts for the same decoded waveform; every limit is a 400
naming the limit, the value and the field; requests without keywords are unchanged."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from typing import Any

import httpx
import openai
import pytest
import soundfile as sf

from helpers import hard_utterance


@pytest.fixture(scope="module")
def hard(digits_engine: Any) -> tuple[bytes, str, str]:
    return hard_utterance(digits_engine, 1)


def test_keywords_transcribe_multipart_and_json_boost_like_the_engine(
    digits_client: httpx.Client, hard: tuple[bytes, str, str]
) -> None:
    wav, spoken, plain = hard
    unboosted = digits_client.post("/transcribe", files={"file": ("a.wav", wav)})
    assert unboosted.status_code == 200 and unboosted.json()["text"] == plain
    r = digits_client.post(
        "/transcribe", files={"file": ("a.wav", wav)}, data={"keywords": spoken, "keyword_weight": "2"}
    )
    assert r.status_code == 200 and r.json()["text"] == spoken, r.text
    several = {"keywords": ["one two, three", spoken], "keyword_weight": "2"}  # repeated field, and a comma list
    r = digits_client.post("/transcribe", files={"file": ("a.wav", wav)}, data=several)
    assert r.status_code == 200 and r.json()["text"] == spoken, r.text
    body = {"audio_base64": base64.b64encode(wav).decode(), "keywords": [spoken], "keyword_weight": 2.0}
    r = digits_client.post("/transcribe", json=body)
    assert r.status_code == 200 and r.json()["text"] == spoken, r.text
    items = [{"phrase": spoken, "weight": 2}, "one two", {"phrase": "three, four"}]  # objects, strings, one weight
    r = digits_client.post("/transcribe", json={**body, "keywords": items, "keyword_weight": None})
    assert r.status_code == 200 and r.json()["text"] == spoken, r.text
    for bad, fragment in [
        ({"keywords": [{"phrase": spoken, "weight": 2}, {"phrase": "one", "weight": 3}]}, "different weights (2, 3)"),
        ({"keywords": [{"phrase": spoken, "weight": 3}], "keyword_weight": 2}, "different weights (2, 3)"),
        ({"keywords": [{"phrase": spoken, "boost": 3}]}, "unknown field"),
        ({"keywords": [5]}, "keywords"),
    ]:
        r = digits_client.post("/transcribe", json={"audio_base64": body["audio_base64"], **bad})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
        assert r.json()["error"]["param"].split(".")[0] == "keywords", r.text


def test_keywords_openai_sdk_extra_body(digits_client: httpx.Client, hard: tuple[bytes, str, str]) -> None:
    wav, spoken, plain = hard
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=digits_client)
    out = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav), extra_body={"keywords": [spoken], "keyword_weight": 2}
    )
    assert out.text == spoken
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text == plain
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), extra_body={"keywords": ["a,,b"]})
    assert info.value.body["param"] == "keywords"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "fragment", "param"),
    [
        ({"keywords": "one,,two"}, "'keywords' holds an empty phrase (in 'one,,two')", "keywords"),
        ({"keywords": "x" * 101}, "a phrase in 'keywords' has 101 characters; the limit is 100", "keywords"),
        ({"keywords": ",".join(f"p{i}" for i in range(1001))}, "has 1001 phrases; the limit is 1000", "keywords"),
        ({"keywords": "one", "keyword_weight": "0"}, "keyword_weight must be in (0, 10], got 0", "keyword_weight"),
        (
            {"keywords": "one", "keyword_weight": "heavy"},
            "keyword_weight must be a number, got 'heavy'",
            "keyword_weight",
        ),
        ({"keyword_weight": "2"}, "keyword_weight needs keywords to weigh", "keyword_weight"),
        (
            {"keywords": "four, Anna Kowalski"},  # the digits model's tokenizer knows the letters of digit words
            "the phrase 'Anna Kowalski' in 'keywords' has characters the model cannot spell: 'A', 'a', 'K', 'l', 'k'",
            "keywords",
        ),
    ],
)
def test_keywords_limits_are_400_naming_the_limit_and_the_field(
    digits_client: httpx.Client, hard: tuple[bytes, str, str], fields: dict[str, str], fragment: str, param: str
) -> None:
    wav = hard[0]
    for route in ("/transcribe", "/v1/audio/transcriptions"):
        data = {**fields, "model": "whisper-1"} if route.startswith("/v1") else fields
        r = digits_client.post(route, files={"file": ("a.wav", wav)}, data=data)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert fragment in err["message"] and err["param"] == param and err["code"] == "invalid_request", err


def test_keywords_on_ws_boost_partials_and_the_final_like_transcribe(digits_client: Any, digits_engine: Any) -> None:
    """`/ws?keywords=...`: the final equals `/transcribe` with the same phrases on the same PCM16 samples (and
    differs from it without them), and the last partial before EOS already carries the boosted words."""
    from streams import pcm16, receive, send_frames, until_type, wav

    hard = hard_utterance(digits_engine, 4)  # long enough for streaming steps before EOS
    wave, _ = sf.read(io.BytesIO(hard[0]), dtype="float32")
    pcm = pcm16(wave)
    spoken = hard[1]

    def post(**data: str) -> str:
        r = digits_client.post("/transcribe", files={"file": ("a.wav", wav(pcm))}, data=data)
        assert r.status_code == 200, r.text
        return str(r.json()["text"])

    boosted, plain = post(keywords=spoken, keyword_weight="2"), post()
    assert boosted != plain
    query = "&".join([f"keywords={spoken.replace(' ', '%20')}", "keyword_weight=2"])
    received: list[dict[str, Any]] = []
    with digits_client.websocket_connect(f"/ws?{query}") as ws:
        done = threading.Event()

        def collect() -> None:  # partials arrive while audio is still being sent (at real time)
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    received.append(receive(ws, 0.2))

        reader = threading.Thread(target=collect)
        reader.start()
        send_frames(ws, pcm)
        done.set()
        reader.join()
        ws.send_bytes(b"__CTRL__:EOS")
        before, final = until_type(ws, "final", "error")
    assert final["type"] == "final" and final["text"] == boosted, final
    partials = [m["text"] for m in received + before if m["type"] == "partial"]
    assert any(partials), [m for m in received + before][:5]  # the boosted stream's steps ran and gave partial text
    with digits_client.websocket_connect("/ws?keyword_weight=2") as ws:
        error = receive(ws)
    assert error["type"] == "error" and "keyword_weight needs keywords" in error["message"], error
    with digits_client.websocket_connect("/ws?keywords=Anna") as ws:
        error = receive(ws)
    assert error["type"] == "error" and "cannot spell: 'A', 'a'" in error["message"], error


def test_keywords_in_realtime_session_update(digits_client: Any, hard: tuple[bytes, str, str]) -> None:
    """`keywords`/`keyword_weight` in the session's `audio.input.transcription` (an extension field): the committed
    item's transcript equals `/transcribe` with the same phrases; a bad value is an `error` event naming the field,
    and the session goes on."""
    import json

    from streams import pcm16, realtime_event, receive, to_24k, wav

    wave, _ = sf.read(io.BytesIO(hard[0]), dtype="float32")
    pcm = to_24k(pcm16(wave))  # the SDK's Realtime types allow 24 kHz PCM only
    spoken = hard[1]
    data = {"keywords": spoken, "keyword_weight": "2"}
    boosted = digits_client.post("/transcribe", files={"file": ("a.wav", wav(pcm, 24000))}, data=data).json()["text"]
    plain = digits_client.post("/transcribe", files={"file": ("a.wav", wav(pcm, 24000))}).json()["text"]
    assert boosted != plain  # so an ignored extension field would fail this test
    transcription = {"model": "whisper-1", "keywords": [spoken], "keyword_weight": 2}
    audio_in = {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None, "transcription": transcription}
    session = {"type": "transcription", "audio": {"input": audio_in}}
    with digits_client.websocket_connect("/v1/realtime?intent=transcription", subprotocols=["realtime"]) as ws:
        realtime_event(receive(ws))  # session.created
        bad = {"type": "transcription", "audio": {"input": {"transcription": {"keywords": ["a,,b"]}}}}
        ws.send_text(json.dumps({"type": "session.update", "session": bad}))
        error = realtime_event(receive(ws))
        assert error.type == "error" and error.error.param == "session.audio.input.transcription.keywords", error
        unspellable = {"type": "transcription", "audio": {"input": {"transcription": {"keywords": ["Anna"]}}}}
        ws.send_text(json.dumps({"type": "session.update", "session": unspellable}))
        error = realtime_event(receive(ws))
        assert error.type == "error" and error.error.param == "session.audio.input.transcription.keywords", error
        assert "cannot spell: 'A', 'a'" in error.error.message
        ws.send_text(json.dumps({"type": "session.update", "session": session}))
        assert realtime_event(receive(ws)).type == "session.updated"
        ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        while True:
            event = realtime_event(receive(ws, 60))
            if event.type == "conversation.item.input_audio_transcription.completed":
                break
    assert event.transcript == boosted
