"""Speakers through `POST /transcribe` (`diarize=true`, multipart and JSON), in-process: the digits model with the
random tiny Sortformer beside it (PARAKEET_DIARIZATION_MODEL, built by `build_diarizer`). The oracle for which speaker
each word gets is the diarizer itself on the very samples the server decoded plus parakeet.core.speakers (the model
tells no real speakers apart: that needs a trained diarizer); the response's shape, summary and turns follow from
it. Without a diarization model, `diarize=true` is a 400 naming the setting; audio past the offline model's 90 s is
a 400 naming the limit."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from inference import build_diarizer, build_engine
from parakeet.core.speakers import speakers_of
from parakeet.core.transcripts import TimedSpan
from parakeet.core.tuning import Tuning
from parakeet.pipeline.audio import decode_audio
from tests.support import speech

from helpers import cpu_settings, digits_app


@pytest.fixture(scope="module")
def diarizing(digits_model_path: Path, tiny_sortformer_path: Path, silero_vad: Any) -> Iterator[tuple[Any, Any, Any]]:
    engine = build_engine(cpu_settings(digits_model_path), torch.device("cpu"))
    diarizer = build_diarizer(str(tiny_sortformer_path), torch.device("cpu"))
    with digits_app(engine, silero_vad, digits_model_path, diarizer=diarizer,
                    diarization_model=str(tiny_sortformer_path), max_audio_duration_s=120) as client:  # fmt: skip
        yield client, engine, diarizer


def conversation_wav() -> tuple[bytes, str]:
    """Two held-out voices taking turns without overlap (speech.conversation; a float32 WAV, so the server decodes
    these very samples) and what they said."""
    talk = speech.conversation(5, 2, speech.HELD_OUT_VOICES, max_overlap_s=0.0)
    buf = io.BytesIO()
    sf.write(buf, talk.waveform, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue(), " ".join(text for _, _, _, text in talk.turns)


def test_transcribe_diarize_puts_a_speaker_on_every_word_from_the_diarizer(diarizing: tuple[Any, Any, Any]) -> None:
    client, _, diarizer = diarizing
    wav, said = conversation_wav()
    r = client.post("/transcribe", files={"file": ("a.wav", wav)}, data={"diarize": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == said
    words = body["timestamps"]["word"]
    waveform = decode_audio(wav, max_duration_s=60).waveform
    spans = [TimedSpan(w["word"], w["start"], w["end"]) for w in words]
    expected = speakers_of(spans, diarizer.diarize([waveform])[0])
    assert [w["speaker"] for w in words] == list(expected.words) and all(w["speaker"] for w in words)
    labels = list(dict.fromkeys(w["speaker"] for w in words))
    assert labels == [chr(65 + i) for i in range(len(labels))]  # A, B, ... in order of first appearance
    summary = body["speakers"]
    assert [s["speaker"] for s in summary["speakers"]] == labels
    turns = summary["turns"]
    assert " ".join(t["text"] for t in turns) == said
    assert all(a["speaker"] != b["speaker"] for a, b in zip(turns, turns[1:], strict=False))
    assert all(seg["speaker"] in labels for seg in body["timestamps"]["segment"])
    j = client.post("/transcribe", json={"audio_base64": base64.b64encode(wav).decode(), "diarize": True})
    assert j.status_code == 200 and j.json()["speakers"] == summary, j.text
    plain = client.post("/transcribe", files={"file": ("a.wav", wav)})
    assert plain.json()["speakers"] is None and plain.json()["timestamps"] is None
    assert client.get("/health").json()["diarization_model"].endswith("tiny_sortformer.nemo")


def test_diarize_past_the_offline_models_limit_is_a_400(diarizing: tuple[Any, Any, Any]) -> None:
    client, _, _ = diarizing
    buf = io.BytesIO()
    sf.write(buf, np.zeros(91 * 16000, np.int16), 16000, format="WAV", subtype="PCM_16")
    r = client.post("/transcribe", files={"file": ("a.wav", buf.getvalue())}, data={"diarize": "true"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "diarize" and "91.0 s long" in err["message"] and "at most 90 s" in err["message"]


def test_diarize_without_a_diarization_model_is_a_400_naming_the_setting(digits_client: Any) -> None:
    wav, _ = conversation_wav()
    r = digits_client.post("/transcribe", files={"file": ("a.wav", wav)}, data={"diarize": "true"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "diarize" and "PARAKEET_DIARIZATION_MODEL" in err["message"], err
    assert digits_client.get("/health").json()["diarization_model"] is None


def test_openai_diarized_json_validates_against_the_sdk_and_follows_the_turns(diarizing: tuple[Any, Any, Any]) -> None:
    """The official SDK parses `diarized_json` as its own `TranscriptionDiarized` (string ids, segment type); the
    segments are the speaker turns `/transcribe` reports for the same audio; known speakers are refused."""
    import openai
    from openai.types.audio import TranscriptionDiarized

    client, _, _ = diarizing
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=client)
    wav, said = conversation_wav()
    out = sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("a.wav", wav), response_format="diarized_json"
    )
    assert isinstance(out, TranscriptionDiarized) and out.task == "transcribe" and out.text == said
    turns = client.post("/transcribe", files={"file": ("a.wav", wav)}, data={"diarize": "true"}).json()
    expected = [(t["speaker"], t["start"], t["end"], t["text"]) for t in turns["speakers"]["turns"]]
    assert [(s.speaker, s.start, s.end, s.text) for s in out.segments] == expected
    assert [s.id for s in out.segments] == [f"seg_{i}" for i in range(len(expected))]
    assert {s.type for s in out.segments} == {"transcript.text.segment"}
    assert out.usage is not None and out.usage.type == "duration"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.audio.transcriptions.create(
            model="whisper-1",
            file=("a.wav", wav),
            response_format="diarized_json",
            known_speaker_names=["Anna"],
            known_speaker_references=["data:audio/wav;base64,AA=="],
        )
    assert info.value.body["param"] == "known_speaker_names"  # type: ignore[index]


def test_openai_diarized_json_without_a_diarization_model_is_a_400(digits_client: Any) -> None:
    wav, _ = conversation_wav()
    data = {"model": "whisper-1", "response_format": "diarized_json"}
    r = digits_client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=data)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    assert "PARAKEET_DIARIZATION_MODEL" in r.json()["error"]["message"]


def test_srt_vtt_and_verbose_json_carry_speakers_and_a_cue_never_mixes_two(diarizing: tuple[Any, Any, Any]) -> None:
    """`diarize=true` (an extension field) on the OpenAI route: SRT cues open with `A: `, WebVTT cues with a `<v A>`
    voice span (parsed by `srt` and `webvtt-py`); every word inside a cue is that cue's speaker's (from
    `/transcribe`'s words); verbose_json words and segments carry `speaker`."""
    import srt
    import webvtt

    client, _, _ = diarizing
    wav, said = conversation_wav()
    words = client.post("/transcribe", files={"file": ("a.wav", wav)}, data={"diarize": "true"}).json()
    words = words["timestamps"]["word"]

    def post(fmt: str, **extra: str) -> Any:
        data = {"model": "whisper-1", "response_format": fmt, "diarize": "true", **extra}
        r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=data)
        assert r.status_code == 200, r.text
        return r

    def speakers_within(start: float, end: float) -> set[str]:
        return {w["speaker"] for w in words if start - 1e-3 <= w["start"] and w["end"] <= end + 1e-3}

    subs = list(srt.parse(post("srt").text))
    assert subs and " ".join(s.content.split(": ", 1)[1].replace("\n", " ") for s in subs) == said
    for sub in subs:
        speaker = sub.content.split(": ", 1)[0]
        assert speakers_within(sub.start.total_seconds(), sub.end.total_seconds()) == {speaker}, sub
    captions = list(webvtt.from_string(post("vtt").text))
    assert [c.voice for c in captions] == [s.content.split(": ", 1)[0] for s in subs]
    assert [c.text for c in captions] == [s.content.split(": ", 1)[1] for s in subs]
    verbose = post("verbose_json", **{"timestamp_granularities[]": "word"}).json()
    assert [w["speaker"] for w in verbose["words"]] == [w["speaker"] for w in words]
    segs = post("verbose_json").json()["segments"]
    assert all(s["speaker"] in {w["speaker"] for w in words} for s in segs)
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                    data={"model": "whisper-1", "response_format": "json", "diarize": "true"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "diarize", r.text


def test_diarized_json_stream_sends_segment_events_then_done_per_the_sdk_types(diarizing: tuple[Any, Any, Any]) -> None:
    from openai.types.audio import TranscriptionTextDoneEvent, TranscriptionTextSegmentEvent

    client, _, _ = diarizing
    wav, said = conversation_wav()
    data = {"model": "gpt-4o-transcribe-diarize", "response_format": "diarized_json", "stream": "true"}
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=data)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    segments = [TranscriptionTextSegmentEvent.model_validate(e) for e in events[:-1]]
    done = TranscriptionTextDoneEvent.model_validate(events[-1])
    assert done.text == said and " ".join(s.text for s in segments) == said
    whole = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                        data={**data, "stream": "false"}).json()  # fmt: skip
    assert [s.model_dump() for s in segments] == whole["segments"]


def test_with_the_trained_diarizer_each_word_gets_the_voice_that_spoke_it(
    digits_model_path: Path, two_speaker_sortformer_path: Path, silero_vad: Any
) -> None:
    """Two held-out voices taking turns (no overlap): `A` is the first voice, `B` the second, and a word's speaker
    is the voice of the turn it lies in (against the generated reference; at least 90% of the words, the rest at
    turn boundaries)."""
    from tests.support.build_test_models import two_voice_conversation

    path = str(two_speaker_sortformer_path)
    engine = build_engine(cpu_settings(digits_model_path), torch.device("cpu"))
    diarizer = build_diarizer(path, torch.device("cpu"))
    right = total = 0
    with digits_app(engine, silero_vad, digits_model_path, diarizer=diarizer, diarization_model=path) as client:
        for seed in range(3):
            talk = two_voice_conversation(60_000 + seed, speech.HELD_OUT_VOICES, max_overlap_s=0.0)
            buf = io.BytesIO()
            sf.write(buf, talk.waveform, 16000, format="WAV", subtype="FLOAT")
            body = client.post("/transcribe", files={"file": ("a.wav", buf.getvalue())}, data={"diarize": "true"})
            assert body.status_code == 200, body.text
            for w in body.json()["timestamps"]["word"]:
                middle = (w["start"] + w["end"]) / 2
                voice = next((k for k, start, end, _ in talk.turns if start <= middle <= end), None)
                if voice is not None:
                    total += 1
                    right += w["speaker"] == "AB"[voice]
    print(f"{right} of {total} words have the speaker that said them")
    assert total >= 20 and right / total >= 0.9, (right, total)


def test_the_diarizers_features_are_held_against_the_memory_budget(
    diarizing: tuple[Any, Any, Any], digits_model_path: Path, tiny_sortformer_path: Path, silero_vad: Any
) -> None:
    """A diarized request holds its features' memory (Tuning.diarization_bytes_per_s per second) while it runs: a
    60 s file that fits the budget alone is refused with 429 naming the budget once diarized, before any GPU time,
    and gives everything back."""
    _, engine, diarizer = diarizing
    buf = io.BytesIO()
    sf.write(buf, np.zeros(60 * 16000, np.float32), 16000, format="WAV", subtype="FLOAT")  # 3.84 MB of samples
    wav = buf.getvalue()
    features = 60 * Tuning().diarization_bytes_per_s
    with digits_app(engine, silero_vad, digits_model_path, diarizer=diarizer,
                    diarization_model=str(tiny_sortformer_path), max_inflight_audio_bytes=9_000_000,
                    max_audio_duration_s=120) as client:  # fmt: skip
        assert client.post("/transcribe", files={"file": ("a.wav", wav)}).status_code == 200
        r = client.post("/transcribe", files={"file": ("a.wav", wav)}, data={"diarize": "true"})
        assert r.status_code == 429, r.text
        message = r.json()["error"]["message"]
        assert f"the diarizer's features ({features} bytes)" in message
        assert "PARAKEET_MAX_INFLIGHT_AUDIO_BYTES" in message
        assert client.get("/health").json()["inflight_audio_bytes"] == 0


class RecordingDiarizer:
    """The real diarizer, recording the size of every batch it is given."""

    def __init__(self, real: Any) -> None:
        self.real, self.model_name, self.max_speakers, self.max_audio_s = (
            real, real.model_name, real.max_speakers, real.max_audio_s
        )  # fmt: skip
        self.batch_sizes: list[int] = []

    def diarize(self, waveforms: Any) -> Any:
        self.batch_sizes.append(len(waveforms))
        return self.real.diarize(waveforms)

    def diarize_steps(self, waveforms: Any, max_step_audio_s: float | None = None) -> Any:
        self.batch_sizes.append(len(waveforms))
        return self.real.diarize_steps(waveforms, max_step_audio_s)

    def warmup(self, duration_s: float = 2.0) -> float:
        self.batch_sizes.append(1)
        return float(self.real.warmup(duration_s))


def test_diarized_requests_that_arrive_together_share_a_batch_and_each_gets_its_own_speakers(
    digits_model_path: Path, tiny_sortformer_path: Path, silero_vad: Any, diarizing: tuple[Any, Any, Any]
) -> None:
    """Four diarized requests in one ASR batch (PARAKEET_MAX_BATCH_SIZE=4, a long PARAKEET_MAX_WAIT_MS) reach the
    diarizer together: they share its batches (fewer calls than files), and each response's speakers are its own
    file's (the diarizer alone on that file)."""
    _, engine, real = diarizing
    recording = RecordingDiarizer(real)
    talks = [speech.conversation(seed, 2, speech.HELD_OUT_VOICES, max_overlap_s=0.0) for seed in (11, 12, 13, 14)]
    wavs = []
    for talk in talks:
        buf = io.BytesIO()
        sf.write(buf, talk.waveform, 16000, format="WAV", subtype="FLOAT")
        wavs.append(buf.getvalue())
    with digits_app(engine, silero_vad, digits_model_path, diarizer=recording,
                    diarization_model=str(tiny_sortformer_path), max_batch_size=4,
                    max_wait_ms=20_000) as client:  # fmt: skip
        warm = len(recording.batch_sizes)  # the warm-up's call
        post = partial(client.post, "/transcribe", data={"diarize": "true"})
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda iw: post(files={"file": (f"{iw[0]}.wav", iw[1])}), enumerate(wavs)))
    batches = recording.batch_sizes[warm:]
    assert sum(batches) == 4 and max(batches) >= 2, batches
    for r, wav in zip(responses, wavs, strict=True):
        assert r.status_code == 200, r.text
        words = r.json()["timestamps"]["word"]
        spans = [TimedSpan(w["word"], w["start"], w["end"]) for w in words]
        alone = speakers_of(spans, real.diarize([decode_audio(wav, max_duration_s=60).waveform])[0])
        assert [w["speaker"] for w in words] == list(alone.words)
