"""The engine contract: what the serving pipeline needs of a model, and nothing more.

`parakeet.engine` (NeMo on a GPU or the CPU: `ParakeetEngine`, `SortformerDiarizer`, `SileroVad`) and the tests'
fakes implement it; the batcher, the stream scheduler, the diarization queue and the worker are typed on it.
Torch-free on purpose: the HTTP process and the tests import it without loading a model. Keep the contract small.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from parakeet.core.keywords import KeyPhrases
from parakeet.core.speakers import SpeakerSegment
from parakeet.core.transcripts import BatchResult

if TYPE_CHECKING:  # keeps the audio-decoder subprocesses, which import SAMPLE_RATE_HZ, free of pydantic
    from parakeet.core.settings import Settings

# Parakeet's preprocessor takes 16 kHz mono audio (model card, `preprocessor.sample_rate` in its config).
# Every waveform inside the server is float32 mono at this rate.
SAMPLE_RATE_HZ = 16_000

Waveform = npt.NDArray[np.float32]  # float32 mono at SAMPLE_RATE_HZ, shape [T], nominally in [-1, 1]


@dataclass(frozen=True)
class DeviceInfo:
    """The device an engine runs on, as /health reports it.

    Attributes:
        type: "cuda" or "cpu".
        index: CUDA device index in this worker's visible order; None on the CPU.
        name: the GPU's name, or "cpu" (a fake engine may say "fake").
        memory_used_bytes: device memory in use by all processes, bytes; None on the CPU.
        memory_total_bytes: device memory, bytes; None on the CPU.
        cuda_graphs: whether the TDT decoder runs as CUDA graphs (README "Settings", `PARAKEET_CUDA_GRAPHS`).
        cuda_graphs_reason: why: forced by the setting, the start-up self-check's verdict, or not a CUDA device.
    """

    type: Literal["cuda", "cpu"]
    index: int | None
    name: str
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    cuda_graphs: bool = False
    cuda_graphs_reason: str = "not a CUDA device"
    encoder_backend: str = "torch"  # what runs the encoder (PARAKEET_ENCODER_BACKEND): "torch" or "onnxruntime"
    encoder_reason: str = ""  # why: the setting, or the start-up self-check's verdict


CPU_DEVICE = DeviceInfo(type="cpu", index=None, name="cpu")


@dataclass(frozen=True)
class StepRequest:
    """One stream's share of a streaming step (`Engine.stream_step`): buffered chunked streaming, as NeMo's
    `BufferedRNNTPipeline` runs an offline model (docs/streaming.md).

    Attributes:
        window: float32 16 kHz samples [W], W >= 1: left context | chunk | right context. It starts a whole number
            of encoder frames (`Engine.encoder_frame_samples`) after the utterance start.
        left_frames: encoder frames at the window's start that are context only (committed by earlier steps).
        commit_frames: encoder frames after them to decode and commit; None: every remaining frame (the
            utterance ends with this window: nothing is speculative).
        state: the opaque decoder state returned by this stream's previous step; None at the utterance start.
        tokens: the token ids committed so far in this utterance (the partial text is built from them).
    """

    window: Waveform
    left_frames: int
    commit_frames: int | None
    state: Any
    tokens: tuple[int, ...] = ()
    keywords: KeyPhrases | None = None  # the stream's phrases to boost; fixed for its utterance (its state holds them)


@dataclass(frozen=True)
class StepResult:
    """What one step gives one stream.

    Attributes:
        tokens: every token id committed in the utterance so far (the request's plus this step's).
        committed_text: the text of `tokens`.
        text: the partial hypothesis: committed text plus the speculative decoding of the right context.
        state: the decoder state after the committed frames (pass it to the next step).
        committed_frames: encoder frames this step committed.
    """

    tokens: tuple[int, ...]
    committed_text: str
    text: str
    state: Any
    committed_frames: int


@dataclass(frozen=True)
class StepBatchResult:
    """The results of one batched step, in request order, and its compute time in ms."""

    results: Sequence[StepResult]
    compute_ms: float


class VoiceActivityModel(Protocol):
    """A frame-level speech detector (Silero VAD, https://github.com/snakers4/silero-vad): per 512-sample frame at
    16 kHz (32 ms), the probability that it holds speech. Stateless object: each stream keeps its opaque state.
    Not thread-safe: the worker calls it from its one VAD thread. It is its own dependency, not part of an
    engine (server.py builds Silero's; tests pass fakes)."""

    frame_samples: int

    def speech_probs(self, frames: Sequence[Waveform], states: Sequence[Any]) -> tuple[list[float], list[Any]]:
        """One frame of each of B streams, batched.

        Args:
            frames: B float32 arrays of `frame_samples` samples.
            states: B opaque states from the previous call for that stream (None: stream start).

        Returns:
            B speech probabilities in [0, 1] and the B new states.
        """
        ...


class Diarizer(Protocol):
    """A speaker diarization model on the engine's device (`parakeet.engine.diarizer.SortformerDiarizer`), built by
    its own factory beside the ASR engine (`DiarizerFactory`). Not thread-safe: the worker's GPU thread calls it.

    Attributes:
        model_name: as PARAKEET_DIARIZATION_MODEL names it.
        max_speakers: the most speakers it tells apart (Sortformer 4spk: 4).
        max_audio_s: the longest audio it takes in one pass (an offline model attends over the whole clip, so its
            memory grows with the square of the length); None: any length (a streaming model's speaker cache).
    """

    model_name: str
    max_speakers: int
    max_audio_s: float | None

    def diarize(self, waveforms: Sequence[Waveform]) -> list[list[SpeakerSegment]]:
        """Each waveform's speaker segments (see `SpeakerSegment`), sorted by start.

        Raises:
            DeviceOutOfMemory: the padded batch does not fit.
        """
        ...

    def diarize_steps(
        self, waveforms: Sequence[Waveform], max_step_audio_s: float | None = None
    ) -> Iterator[list[list[SpeakerSegment]] | None]:
        """`diarize` in pieces of at most `max_step_audio_s` of padded audio: each `next()` does one piece on the
        calling (GPU) thread and gives None, the last gives the segments; other device work may run between.

        Raises:
            DeviceOutOfMemory: from the piece that did not fit.
        """
        ...

    def warmup(self, duration_s: float = 2.0) -> float:
        """Diarize `duration_s` seconds of synthetic audio (lazy init before the first request); return ms."""
        ...


class Engine(Protocol):
    """A loaded model on one device. Not thread-safe: the worker calls it from its one GPU thread only.

    Attributes:
        model_name: the served model, as responses and /health name it.
    """

    model_name: str
    encoder_frame_samples: int  # input samples per encoder frame (Parakeet: 10 ms hop x 8 subsampling = 1280)

    def transcribe(
        self,
        waveforms: Sequence[Waveform],
        timestamps: Sequence[bool] | None = None,
        confidence: Sequence[bool] | None = None,
        keywords: Sequence[KeyPhrases | None] | None = None,
    ) -> BatchResult:
        """Transcribe a batch in one padded forward pass.

        Args:
            waveforms: B >= 1 waveforms (see `Waveform`), each of length T_i >= 1 samples.
            timestamps: B flags: which transcripts need word/segment/char timestamps (None: all). An engine
                may fill them anyway; one that computes them on request saves that time for the others.
            confidence: B flags: which transcripts need word and token confidence (and token log-probabilities)
                on their words and chars; they imply timestamps. None: none. The text never changes.
            keywords: B phrase lists or None (custom vocabulary, `parakeet.core.keywords`): each item's phrases are
                boosted in its own decoding; items without stay as they would be alone. None: no item has any.

        Returns:
            Exactly B transcripts, in input order, and the batch's compute time in ms.

        Raises:
            DeviceOutOfMemory: the padded batch does not fit on the device (the batcher splits and retries).
            Exception: anything else fails this batch only (its requests get 500).
        """
        ...

    def stream_step(self, requests: Sequence[StepRequest]) -> StepBatchResult:
        """Advance B streams by one step in one padded encoder call and two batched decoder calls (commit, then
        the speculative right context).

        Args:
            requests: B >= 1 steps (see `StepRequest`); windows may differ in length.

        Returns:
            B results in request order, and the step's compute time.

        Raises:
            ValueError: an empty batch or window, or a window shorter than `left_frames + commit_frames`.
            DeviceOutOfMemory: the padded step does not fit on the device.
        """
        ...

    def unspellable(self, text: str) -> str:
        """The distinct characters of `text` the model's tokenizer cannot spell (it maps them to its unknown
        token), in first-seen order; "" when it spells them all. Thread-safe, unlike the rest: it runs on the
        event loop (a request's key phrases are checked before they are queued)."""
        ...

    def warmup(self, duration_s: float = 2.0) -> float:
        """Run one batch of `duration_s` seconds of synthetic audio; return its compute time in ms."""
        ...

    def device_info(self) -> DeviceInfo:
        """The device, with its memory figures read now."""
        ...


class EngineFactory(Protocol):
    """Builds the engine for one worker (production: `parakeet.engine.factories.ParakeetEngineFactory`; tests: a
    fake)."""

    def visible_gpus(self) -> int:
        """CUDA devices this process can see (0 without CUDA)."""
        ...

    def __call__(self, settings: Settings, gpu_id: int | None) -> Engine:
        """Load the model named by `settings` on GPU `gpu_id` (None: the CPU). Runs on the worker's GPU thread.

        Raises:
            ModelLoadError: the model could not be loaded (one message naming the ways out).
        """
        ...


class DiarizerFactory(Protocol):
    """Builds the speaker diarizer for one worker, beside its engine (production:
    `parakeet.engine.factories.SortformerDiarizerFactory`; tests: a fake)."""

    def __call__(self, settings: Settings, gpu_id: int | None) -> Diarizer | None:
        """Load the diarizer `settings` names on GPU `gpu_id` (None: the CPU), or None when it names none. Runs on
        the worker's GPU thread.

        Raises:
            ModelLoadError: the model could not be loaded.
        """
        ...


class VadFactory(Protocol):
    """Builds the speech detector live streams use (production: `parakeet.engine.factories.SileroVadFactory`)."""

    def __call__(self) -> VoiceActivityModel | None: ...
