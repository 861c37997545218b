"""The OpenAI transcription surface as of late 2026: current model names, the streaming events' published
schema (validated with the official SDK's own types), per-chunk streaming of long audio, fields this model
cannot honour. Oracles: the openai SDK's models, the fake engine's batch log."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

import speech
from helpers import ServerProcess, running_fake_server


@pytest.fixture(scope="module")
def spoken() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, speech.speak("four two seven one nine"), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(digits_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{digits_server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize(
    "model", ["gpt-transcribe", "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-2026-03-20"]
)
def test_current_model_names_are_served(client: openai.OpenAI, spoken: bytes, model: str) -> None:
    assert client.audio.transcriptions.create(model=model, file=("a.wav", spoken)).text == "four two seven one nine"


def test_diarize_model_is_refused_not_misleadingly_served(client: openai.OpenAI, spoken: bytes) -> None:
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


def test_stream_events_validate_against_the_sdk_types(digits_server: ServerProcess, spoken: bytes) -> None:
    """The done event must parse as the spec's TranscriptionTextDoneEvent, whose `usage` is token usage only:
    so the server omits `usage` there (a duration usage would fail this validation)."""
    r = httpx.post(
        f"{digits_server.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", spoken)},
        data={"model": "gpt-transcribe", "stream": "true"},
        timeout=60,
    )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    deltas = [TranscriptionTextDeltaEvent.model_validate(e, strict=True) for e in events[:-1]]
    done = TranscriptionTextDoneEvent.model_validate(events[-1], strict=True)
    assert "".join(d.delta for d in deltas) == done.text == "four two seven one nine"
    assert "usage" not in events[-1]


def _long_file(seconds: float) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(5)
    sf.write(buf, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_long_audio_streams_each_chunk_as_it_finishes(tmp_path: Path) -> None:
    """A 40 s file in ~6 s chunks, one chunk on the GPU at a time, 0.5 s per batch: the first delta reaches the
    client while most chunks have not run yet (asked of the fake engine's batch log at that moment)."""
    long_audio = {"THRESHOLD_S": "10", "CHUNK_S": "6", "SEARCH_S": "2", "CONTEXT_S": "0.5", "CHUNKS_IN_FLIGHT": "1"}
    env = {f"PARAKEET_LONG_AUDIO_{k}": v for k, v in long_audio.items()} | {"FAKE_DELAY_S": "0.5"}
    with running_fake_server(tmp_path, env) as server:
        events: list[dict[str, Any]] = []
        batches_at_first_delta = None
        with httpx.stream(
            "POST", f"{server.url}/v1/audio/transcriptions", files={"file": ("long.wav", _long_file(40))},
            data={"model": "whisper-1", "stream": "true"}, timeout=120,
        ) as r:  # fmt: skip
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line[6:]))
                if batches_at_first_delta is None:
                    batches_at_first_delta = len(server.fake_batches())
        total = len(server.fake_batches())
    assert total >= 6
    assert batches_at_first_delta is not None and batches_at_first_delta < total - 2, (batches_at_first_delta, total)
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done"
    assert "".join(deltas) == events[-1]["text"] and len(deltas) >= total - 1


# --- confidence and logprobs ---------------------------------------------------------------------------------


def test_transcribe_confidence_on_request(digits_server: ServerProcess, spoken: bytes) -> None:
    url = f"{digits_server.url}/transcribe"
    plain = httpx.post(url, files={"file": ("a.wav", spoken)}, timeout=60).json()
    scored = httpx.post(url, files={"file": ("a.wav", spoken)}, data={"confidence": "true"}, timeout=60).json()
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


def test_openai_logprobs_in_the_stream_done_event(digits_server: ServerProcess, spoken: bytes) -> None:
    r = httpx.post(
        f"{digits_server.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", spoken)},
        data={"model": "gpt-4o-transcribe", "stream": "true", "include[]": "logprobs"},
        timeout=60,
    )
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    done = TranscriptionTextDoneEvent.model_validate(events[-1], strict=True)
    assert done.logprobs and "".join(lp.token or "" for lp in done.logprobs).strip() == done.text


def test_openai_logprobs_with_a_subtitle_format_is_refused(client: openai.OpenAI, spoken: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", spoken), include=["logprobs"],
                                           response_format="srt")  # fmt: skip
    assert info.value.body["param"] == "include"  # type: ignore[index]
