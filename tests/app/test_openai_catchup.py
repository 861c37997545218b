"""The OpenAI transcription surface as of late 2026: current model names, the streaming events' published
schema (validated with the official SDK's own types), fields this model cannot honour, confidence and logprobs; in
process against the digits app (per-chunk streaming of long audio, which needs a socket: tests/e2e). Oracles: the
openai SDK's models and types."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest
import soundfile as sf
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from tests.support import speech


@pytest.fixture(scope="module")
def spoken() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speech.speak("four two seven one nine"), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(digits_client: httpx.Client) -> openai.OpenAI:
    """The official SDK's client on the in-process digits app (its HTTP client is Starlette's TestClient)."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=digits_client)


@pytest.mark.parametrize(
    "model", ["gpt-transcribe", "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-2026-03-20"]
)
def test_current_model_names_are_served(client: openai.OpenAI, spoken: bytes, model: str) -> None:
    assert client.audio.transcriptions.create(model=model, file=("a.wav", spoken)).text == "four two seven one nine"


def test_diarize_model_is_refused_without_a_diarization_model(client: openai.OpenAI, spoken: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize", file=("a.wav", spoken))
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_fields_the_model_cannot_honour_are_accepted(client: openai.OpenAI, spoken: bytes) -> None:
    result = client.audio.transcriptions.create(
        model="gpt-transcribe",
        file=("a.wav", spoken),
        prompt="digits",
        chunking_strategy="auto",
        extra_body={"keywords": ["nine"], "languages": ["en"], "known_speaker_names": ["A"]},
    )
    assert result.text == "four two seven one nine"


def test_stream_events_validate_against_the_sdk_types(digits_client: httpx.Client, spoken: bytes) -> None:
    """The done event must parse as the spec's TranscriptionTextDoneEvent, whose `usage` is token usage only:
    so the server omits `usage` there (a duration usage would fail this validation)."""
    r = digits_client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", spoken)},
        data={"model": "gpt-transcribe", "stream": "true"},
    )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    deltas = [TranscriptionTextDeltaEvent.model_validate(e, strict=True) for e in events[:-1]]
    done = TranscriptionTextDoneEvent.model_validate(events[-1], strict=True)
    assert "".join(d.delta for d in deltas) == done.text == "four two seven one nine"
    assert "usage" not in events[-1]


# --- confidence and logprobs ---------------------------------------------------------------------------------


def test_transcribe_confidence_on_request(digits_client: httpx.Client, spoken: bytes) -> None:
    plain = digits_client.post("/transcribe", files={"file": ("a.wav", spoken)}).json()
    scored = digits_client.post("/transcribe", files={"file": ("a.wav", spoken)}, data={"confidence": "true"}).json()
    assert scored["text"] == plain["text"] == "four two seven one nine"
    words = scored["timestamps"]["word"]
    assert [w["word"] for w in words] == plain["text"].split()
    assert all(0.0 <= w["confidence"] <= 1.0 for w in words)
    assert all(c["logprob"] <= 0.0 for c in scored["timestamps"]["char"])


def test_openai_logprobs_parse_with_the_sdk(client: openai.OpenAI, spoken: bytes) -> None:
    result = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", spoken), include=["logprobs"])
    assert result.logprobs, result
    assert "".join(lp.token or "" for lp in result.logprobs).strip() == result.text == "four two seven one nine"
    assert all(lp.logprob is not None and lp.logprob <= 0.0 for lp in result.logprobs)
    assert all(bytes(int(b) for b in lp.bytes or []).decode() == lp.token for lp in result.logprobs)
    verbose = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", spoken), include=["logprobs"], response_format="verbose_json",
        timestamp_granularities=["word"],
    )  # fmt: skip
    assert all(0.0 <= w.model_extra["confidence"] <= 1.0 for w in verbose.words or [])  # type: ignore[index]


def test_openai_logprobs_in_the_stream_done_event(digits_client: httpx.Client, spoken: bytes) -> None:
    r = digits_client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", spoken)},
        data={"model": "gpt-4o-transcribe", "stream": "true", "include[]": "logprobs"},
    )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    done = TranscriptionTextDoneEvent.model_validate(events[-1], strict=True)
    assert done.logprobs and "".join(lp.token or "" for lp in done.logprobs).strip() == done.text


def test_openai_logprobs_with_a_subtitle_format_is_refused(client: openai.OpenAI, spoken: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", spoken), include=["logprobs"],
                                           response_format="srt")  # fmt: skip
    assert info.value.body["param"] == "include"  # type: ignore[index]
