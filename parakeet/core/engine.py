"""The engine contract: what the serving pipeline needs of a model, and nothing more.

`inference.ParakeetEngine` (NeMo on a GPU or the CPU) and the tests' fake engine implement it; the batcher
and the worker are typed on it. Torch-free on purpose: the HTTP process and the tests import it without
loading a model. Streaming will add a step method here; keep the contract small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

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
    """

    type: Literal["cuda", "cpu"]
    index: int | None
    name: str
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


CPU_DEVICE = DeviceInfo(type="cpu", index=None, name="cpu")


class Engine(Protocol):
    """A loaded model on one device. Not thread-safe: the worker calls it from its one GPU thread only.

    Attributes:
        model_name: the served model, as responses and /health name it.
    """

    model_name: str

    def transcribe(self, waveforms: Sequence[Waveform], timestamps: Sequence[bool] | None = None) -> BatchResult:
        """Transcribe a batch in one padded forward pass.

        Args:
            waveforms: B >= 1 waveforms (see `Waveform`), each of length T_i >= 1 samples.
            timestamps: B flags: which transcripts need word/segment/char timestamps (None: all). An engine
                may fill them anyway; one that computes them on request saves that time for the others.

        Returns:
            Exactly B transcripts, in input order, and the batch's compute time in ms.

        Raises:
            DeviceOutOfMemory: the padded batch does not fit on the device (the batcher splits and retries).
            Exception: anything else fails this batch only (its requests get 500).
        """
        ...

    def warmup(self, duration_s: float = 2.0) -> float:
        """Run one batch of `duration_s` seconds of synthetic audio; return its compute time in ms."""
        ...

    def device_info(self) -> DeviceInfo:
        """The device, with its memory figures read now."""
        ...


class EngineFactory(Protocol):
    """Builds the engine for one worker (production: `server.ParakeetEngineFactory`; tests: a fake)."""

    def visible_gpus(self) -> int:
        """CUDA devices this process can see (0 without CUDA)."""
        ...

    def __call__(self, settings: Settings, gpu_id: int | None) -> Engine:
        """Load the model named by `settings` on GPU `gpu_id` (None: the CPU). Runs on the worker's GPU thread.

        Raises:
            ModelLoadError: the model could not be loaded (one message naming the ways out).
        """
        ...
