"""A deterministic fake engine for scheduler, admission and error-table tests, and an app that serves it.

FakeEngine's "transcript" of a waveform is its length in samples followed by its first sample's value
scaled to an integer tag (`tagged_wave` makes such waveforms), so every test can tell which request got
which answer. Batch time is `delay_s + per_item_s * n`. `uvicorn fakes:app --app-dir tests` serves it with
the FAKE_* environment variables below, plus a test-only `GET /_fake/batches` listing the batches it ran.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from parakeet.core.engine import (
    SAMPLE_RATE_HZ,
    DeviceInfo,
    StepBatchResult,
    StepRequest,
    StepResult,
    VoiceActivityModel,
)
from parakeet.core.errors import DeviceOutOfMemory, ModelLoadError
from parakeet.core.settings import Settings
from parakeet.core.speakers import SpeakerSegment
from parakeet.core.transcripts import BatchResult, TimedSpan, Transcript
from parakeet.core.tuning import Tuning


def tagged_wave(tag: int, duration_s: float = 1.0) -> npt.NDArray[np.float32]:
    """A waveform whose first sample encodes `tag` (0 <= tag < 10000) and that is otherwise quiet."""
    w = np.zeros(max(1, int(duration_s * SAMPLE_RATE_HZ)), dtype=np.float32)
    w[0] = tag / 10000
    return w


def tag_of(waveform: npt.NDArray[np.float32]) -> int:
    return round(float(waveform[0]) * 10000)


@dataclass
class FakeDiarizer:
    """A `Diarizer` that records every batch (tags per batch, `tagged_wave`) and gives each file one segment of
    speaker `tag % 4` over its length; can be gated, poisoned and made to run out of memory, as FakeEngine."""

    model_name: str = "fake-diarizer"
    max_speakers: int = 4
    max_audio_s: float | None = None
    fail_tag: int | None = None  # a batch containing this tag raises RuntimeError
    oom_above: int | None = None  # batches larger than this raise DeviceOutOfMemory
    gate: threading.Event | None = None  # when set, each batch waits for it
    pieces: int = 1  # diarize_steps' pieces per batch
    batches: list[list[int]] = field(default_factory=list)
    step_caps: list[float | None] = field(default_factory=list)

    def diarize(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> list[list[SpeakerSegment]]:
        if self.gate is not None:
            self.gate.wait(30)
        tags = [tag_of(w) for w in waveforms]
        if self.oom_above is not None and len(waveforms) > self.oom_above:
            raise DeviceOutOfMemory(f"fake: the diarization batch of {len(waveforms)} does not fit")
        self.batches.append(tags)
        if self.fail_tag is not None and self.fail_tag in tags:
            raise RuntimeError(f"fake diarizer fault on tag {self.fail_tag}")
        return [[SpeakerSegment(0.0, len(w) / SAMPLE_RATE_HZ, t % 4)] for w, t in zip(waveforms, tags, strict=True)]

    def diarize_steps(
        self, waveforms: Sequence[npt.NDArray[np.float32]], max_step_audio_s: float | None = None
    ) -> Iterator[list[list[SpeakerSegment]] | None]:
        """One piece per `pieces` (default 1), then `diarize`'s result; records the step cap."""
        self.step_caps.append(max_step_audio_s)
        for _ in range(self.pieces - 1):
            yield None
        yield self.diarize(waveforms)

    def warmup(self, duration_s: float = 2.0) -> float:
        """Records nothing (the warm-up is not a request's batch)."""
        return 0.0


@dataclass
class FakeEngine:
    """Records every batch it runs; can be gated, slowed, poisoned, and made to run out of memory."""

    model_name: str = "fake"
    encoder_frame_samples: int = 1280
    delay_s: float = 0.0
    per_item_s: float = 0.0
    fail_tag: int | None = None  # a batch containing this tag raises RuntimeError
    oom_above: int | None = None  # batches larger than this raise DeviceOutOfMemory
    short_by: int = 0  # return this many transcripts fewer than the batch holds (a broken engine)
    gate: threading.Event | None = None  # when set, each batch waits for it
    batches: list[list[int]] = field(default_factory=list)  # tags per batch, in run order
    timestamps_asked: list[list[bool]] = field(default_factory=list)  # the timestamp flags of each call
    keywords_asked: list[list[Any]] = field(default_factory=list)  # the key phrases of each call (None: none)
    steps: list[list[StepRequest]] = field(default_factory=list)  # the requests of each streaming step
    cannot_spell: str = ""  # characters its "tokenizer" cannot spell (unspellable)

    def transcribe(
        self,
        waveforms: Sequence[npt.NDArray[np.float32]],
        timestamps: Sequence[bool] | None = None,
        confidence: Sequence[bool] | None = None,
        keywords: Sequence[Any] | None = None,
    ) -> BatchResult:
        t0 = time.perf_counter()
        self.timestamps_asked.append(list(timestamps) if timestamps is not None else [True] * len(waveforms))
        self.keywords_asked.append(list(keywords) if keywords is not None else [None] * len(waveforms))
        if self.gate is not None:
            self.gate.wait(30)
        tags = [tag_of(w) for w in waveforms]
        if self.oom_above is not None and len(waveforms) > self.oom_above:
            raise DeviceOutOfMemory(f"fake OOM on a batch of {len(waveforms)}")
        self.batches.append(tags)
        if self.fail_tag is not None and self.fail_tag in tags:
            raise RuntimeError("fake engine failure at /secret/path.py: illegal memory access")
        time.sleep(self.delay_s + self.per_item_s * len(waveforms))
        texts = []
        for tag, w in zip(tags, waveforms, strict=True):
            text = f"{tag} {len(w)}"  # one "word" spanning the clip, so long-audio merging has timestamps
            texts.append(Transcript(text, 1, len(w) // 1280, words=(TimedSpan(text, 0.0, len(w) / SAMPLE_RATE_HZ),)))
        return BatchResult(texts[: len(texts) - self.short_by], (time.perf_counter() - t0) * 1000)

    def stream_step(self, requests: Sequence[StepRequest]) -> StepBatchResult:
        """Commits what it is asked to; its partial text counts the window's samples (no model behind it).
        Records each step's requests; waits for `gate` like `transcribe`."""
        self.steps.append(list(requests))
        if self.gate is not None:
            self.gate.wait(30)
        results = []
        for r in requests:
            frames = r.commit_frames if r.commit_frames is not None else len(r.window) // 1280 - r.left_frames
            results.append(StepResult(r.tokens, "", f"{len(r.window)}", None, frames))
        return StepBatchResult(results, 0.1)

    def unspellable(self, text: str) -> str:
        return "".join(c for c in dict.fromkeys(text) if c in self.cannot_spell)

    def warmup(self, duration_s: float = 2.0) -> float:
        return 1.0

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(type="cpu", index=None, name="fake")


class FixedEngineFactory:
    """Serves a given engine (a FakeEngine, or the session's digits engine) after `load_delay_s`; claims from `gpus`
    pretend GPUs (the locks are real: gpu_lock.py)."""

    def __init__(self, engine: Any, load_delay_s: float = 0.0, gpus: int = 0, load_error: str | None = None) -> None:
        self.engine = engine
        self.load_delay_s = load_delay_s
        self.gpus = gpus
        self.load_error = load_error

    def visible_gpus(self) -> int:
        return self.gpus

    def __call__(self, settings: Settings, gpu_id: int | None) -> Any:
        time.sleep(self.load_delay_s)
        if self.load_error is not None:
            raise ModelLoadError(self.load_error)
        return self.engine


class FixedDiarizerFactory:
    """Serves a given diarizer (a FakeDiarizer, a session's Sortformer) or none."""

    def __init__(self, diarizer: Any = None) -> None:
        self.diarizer = diarizer

    def __call__(self, settings: Settings, gpu_id: int | None) -> Any:
        return self.diarizer


def _env_float(name: str) -> float:
    return float(os.environ.get(name, "0"))


class NoVad:
    """A VAD factory for apps whose streams never ask for VAD."""

    def __call__(self) -> VoiceActivityModel | None:
        return None


class SharedVad:
    """A VAD factory handing every app the same (session-wide) model."""

    def __init__(self, vad: VoiceActivityModel) -> None:
        self.vad = vad

    def __call__(self) -> VoiceActivityModel | None:
        return self.vad


def build_app_from_env() -> Any:
    """The app with a FakeEngine configured by FAKE_DELAY_S, FAKE_PER_ITEM_S, FAKE_FAIL_TAG; FAKE_LOAD_DELAY_S
    makes its model load take that long, FAKE_LOAD_ERROR makes it fail with that message, FAKE_GPU_COUNT pretends
    there are GPUs to claim, FAKE_TUNING (JSON) sets internal constants (parakeet/core/tuning.py)."""
    from server import create_app

    fail = os.environ.get("FAKE_FAIL_TAG")
    engine = FakeEngine(
        delay_s=_env_float("FAKE_DELAY_S"),
        per_item_s=_env_float("FAKE_PER_ITEM_S"),
        fail_tag=int(fail) if fail else None,
    )
    factory = FixedEngineFactory(engine, _env_float("FAKE_LOAD_DELAY_S"), int(os.environ.get("FAKE_GPU_COUNT", "0")),
                                 os.environ.get("FAKE_LOAD_ERROR"))  # fmt: skip
    tuning = Tuning(**json.loads(os.environ.get("FAKE_TUNING", "{}")))
    app = create_app(
        engine_factory=factory, vad_factory=NoVad(), diarizer_factory=FixedDiarizerFactory(), tuning=tuning
    )

    @app.get("/_fake/batches", include_in_schema=False)
    async def fake_batches() -> list[list[int]]:
        return [list(b) for b in engine.batches]

    return app


app = build_app_from_env() if os.environ.get("FAKE_APP") == "1" else None
