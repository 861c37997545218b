"""One place that renders a finished transcription (an `Outcome`) in every format the API answers with: `POST
/transcribe`'s JSON body and OpenAI's text, srt, vtt, verbose_json and diarized_json. The synchronous routes render
a request's outcome with it as they answer; the jobs route renders a stored outcome with it when the result is read
(README "Jobs"), so a job's result is byte for byte what the synchronous route gives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from parakeet.api.schemas import SpeakersOut, Timestamps, TranscriptionResponse
from parakeet.api.subtitles import Cue, CueLimits, cues, fallback_cues, to_srt, to_vtt
from parakeet.core.keywords import KeyPhrases
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.pipeline.requests import Outcome, TranscribeOptions

# Every format a result can be read in: `json` is POST /transcribe's body, the rest OpenAI's response formats.
RESULT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")


@dataclass(frozen=True)
class TranscriptionForm:
    """The validated fields of one request (temperature is checked and then not used: greedy decoding)."""

    model: str
    language: str | None
    response_format: str
    granularities: tuple[str, ...]
    stream: bool
    logprobs: bool  # include[]=logprobs: token log-probabilities (and word confidence in verbose_json)
    cue_limits: CueLimits
    keywords: KeyPhrases | None = None  # keywords[] (an extension of OpenAI's API): phrases to boost
    diarize: bool = False  # diarized_json, or the `diarize` extension field with srt, vtt or verbose_json

    @property
    def options(self) -> TranscribeOptions:
        """Subtitles, verbose_json and the streamed word deltas are built from timestamps; json/text not;
        diarized_json from the speakers."""
        timestamps = self.stream or self.response_format in ("srt", "vtt", "verbose_json")
        return TranscribeOptions(timestamps=timestamps, confidence=self.logprobs, keywords=self.keywords,
                                 diarize=self.diarize)  # fmt: skip


def segments_of(t: Transcript, duration_s: float) -> list[TimedSpan]:
    """Sentence segments (NeMo's, split at . ! ?); one segment over the whole audio if NeMo gave none."""
    if t.segments:
        return list(t.segments)
    return [TimedSpan(t.text, 0.0, round(duration_s, 3))] if t.text else []


def subtitle_cues(outcome: Outcome, limits: CueLimits) -> list[Cue]:
    """SRT/VTT cues from the word timestamps (parakeet/api/subtitles.py); NeMo's segments if there are none."""
    t = outcome.transcript
    if not t.words:
        return fallback_cues(segments_of(t, outcome.audio.duration_s), limits)
    return cues(t.words, limits, outcome.speakers.words if outcome.speakers is not None else None)


def logprobs(t: Transcript) -> list[dict[str, Any]]:
    """OpenAI's `logprobs` ({token, logprob, bytes} per token) from the tokens' log-probabilities (README
    "Confidence"); SentencePiece's word marker becomes a space, as OpenAI's tokens carry it."""
    out = []
    for c in t.chars:
        token = c.text.replace("▁", " ")
        out.append(
            {"token": token, "logprob": c.logprob if c.logprob is not None else 0.0, "bytes": list(token.encode())}
        )
    return out


def usage(outcome: Outcome) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(outcome.audio.duration_s, 3)}


def verbose_json(outcome: Outcome, form: TranscriptionForm) -> dict[str, Any]:
    """OpenAI's verbose_json: `words` only when asked for; `segments` unless only words were asked for.
    Whisper-only segment fields get neutral values (the SDK declares all ten)."""
    t, sp = outcome.transcript, outcome.speakers
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": form.language or "unknown",
        "duration": round(outcome.audio.duration_s, 3),
        "text": t.text,
    }
    if form.granularities != ("word",):
        body["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": s.start_s,
                "end": s.end_s,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }  # fmt: skip
            | ({"speaker": sp.of_span(t.words, s.start_s, s.end_s)} if sp is not None else {})
            for i, s in enumerate(segments_of(t, outcome.audio.duration_s))
        ]
    if "word" in form.granularities:
        labels = sp.words if sp is not None else [None] * len(t.words)
        body["words"] = [
            {"word": w.text, "start": w.start_s, "end": w.end_s}
            | ({"confidence": w.confidence} if form.logprobs and w.confidence is not None else {})
            | ({"speaker": label} if sp is not None else {})
            for w, label in zip(t.words, labels, strict=True)
        ]
    body["usage"] = usage(outcome)
    return body


def diarized_json(outcome: Outcome) -> dict[str, Any]:
    """OpenAI's `diarized_json` (the SDK's `TranscriptionDiarized`): one segment per speaker turn (consecutive words
    of one speaker), ids `seg_0`, `seg_1`, ... (strings)."""
    turns = outcome.speakers.turns if outcome.speakers is not None else ()
    return {
        "task": "transcribe",
        "duration": round(outcome.audio.duration_s, 3),
        "text": outcome.transcript.text,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{i}",
                "start": t.start_s,
                "end": t.end_s,
                "speaker": t.speaker,
                "text": t.text,
            }
            for i, t in enumerate(turns)
        ],  # fmt: skip
        "usage": usage(outcome),
    }


MEDIA_TYPES = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt"}


def formatted(outcome: Outcome, form: TranscriptionForm) -> str:
    """The body of `form.response_format` but `json` (text, srt, vtt, verbose_json, diarized_json)."""
    fmt = form.response_format
    if fmt == "text":
        return outcome.transcript.text + "\n"
    if fmt in ("srt", "vtt"):
        cues_ = subtitle_cues(outcome, form.cue_limits)
        return to_srt(cues_) if fmt == "srt" else to_vtt(cues_)
    body = diarized_json(outcome) if fmt == "diarized_json" else verbose_json(outcome, form)
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # as Starlette's JSONResponse


def transcription_response(
    outcome: Outcome, options: TranscribeOptions, *, request_id: str, processing_ms: float, gpu_id: int | None
) -> TranscriptionResponse:
    """The `POST /transcribe` body of a finished request (timestamps when `options` asked for them)."""
    t = outcome.transcript
    return TranscriptionResponse(
        text=t.text,
        duration_sec=round(outcome.audio.duration_s, 4),
        processing_time_ms=round(processing_ms, 2),
        gpu_id=gpu_id,
        model=outcome.model,
        request_id=request_id,
        decode_ms=round(outcome.decode_ms, 2),
        queue_ms=round(outcome.queue_ms, 2),
        compute_ms=round(outcome.compute_ms, 2),
        batch_size=outcome.batch_size,
        chunks=outcome.chunks,
        source_sample_rate_hz=outcome.audio.source_sample_rate_hz,
        source_channels=outcome.audio.source_channels,
        timestamps=Timestamps.of(t, outcome.speakers) if options.word_times else None,
        speakers=SpeakersOut.of(outcome.speakers) if outcome.speakers is not None else None,
    )


def result_body(
    outcome: Outcome,
    options: TranscribeOptions,
    fmt: str,
    *,
    request_id: str,
    processing_ms: float,
    gpu_id: int | None,
) -> tuple[str, str]:
    """A stored outcome as `fmt` (one of RESULT_FORMATS) and its media type, as the synchronous routes render it:
    `json` is `POST /transcribe`'s body (timestamps as `options` asked; `request_id`, `processing_ms` and `gpu_id`
    those of the run that produced it: for a job, its id, its run's time and its worker's GPU), the others the
    OpenAI route's (`formatted`; verbose_json with words and segments, cues with the default limits, token
    log-probabilities when confidence was asked for)."""
    if fmt == "json":
        body = transcription_response(outcome, options, request_id=request_id, processing_ms=processing_ms,
                                      gpu_id=gpu_id)  # fmt: skip
        return body.model_dump_json(), "application/json"
    form = TranscriptionForm(model=outcome.model, language=None, response_format=fmt,
                             granularities=("word", "segment"), stream=False, logprobs=options.confidence,
                             cue_limits=CueLimits(), diarize=options.diarize)  # fmt: skip
    return formatted(outcome, form), MEDIA_TYPES.get(fmt, "application/json")
