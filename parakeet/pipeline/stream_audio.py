"""Raw audio of live protocols -> float32 16 kHz mono samples: linear PCM (8/16/24/32-bit, any rate, 1-8 channels)
and G.711 mu-law / A-law, resampled with soxr's streaming resampler (HQ), the same steps and numbers as the upload
decoder (parakeet.pipeline.audio), so a stream's audio equals the same audio uploaded as a WAV file.

Shared by `/ws`, the OpenAI Realtime route and Wyoming; it knows nothing of sockets. Also a stream's sample buffer
(`SampleBuffer`) and a Wyoming utterance's recording (`PcmRecording`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

from parakeet.core.engine import SAMPLE_RATE_HZ, Waveform
from parakeet.pipeline.audio import BlockConverter, DecodedAudio, check_format

Encoding = Literal["pcm", "pcmu", "pcma"]
G711_RATE_HZ = 8000


def _g711_tables() -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """256-entry decode tables of ITU-T G.711 mu-law and A-law to 16-bit linear (Recommendation G.711, 1988; the same
    values as CPython's audioop.ulaw2lin / alaw2lin)."""
    codes = np.arange(256)
    u = ~codes & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    ulaw = (((mantissa << 3) + 0x84) << exponent) - 0x84
    ulaw = np.where(u & 0x80, -ulaw, ulaw)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    alaw = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    alaw = np.where(a & 0x80, alaw, -alaw)
    return ulaw.astype(np.int16), alaw.astype(np.int16)


ULAW, ALAW = _g711_tables()
# Linear PCM sample widths, bytes -> (numpy dtype, offset, scale): libsndfile's own float conversion of WAV PCM
# (unsigned 8-bit centred at 128; signed 16/24/32-bit divided by 2^(bits-1)).
_WIDTHS = {1: ("u1", 128, 128.0), 2: ("<i2", 0, 32768.0), 4: ("<i4", 0, 2147483648.0)}


class StreamAudio:
    """One stream's raw audio converter. `convert` any number of byte chunks (a partial sample is carried over to
    the next call); `flush` at the end of an utterance returns the resampler's delayed tail and starts afresh.

    Args:
        encoding: "pcm" (little-endian linear PCM), "pcmu" (G.711 mu-law) or "pcma" (G.711 A-law; both 8 kHz mono).
        sample_rate_hz: the audio's rate (8-96 kHz).
        width_bytes: PCM sample width, 1-4 bytes.
        channels: interleaved channels, 1-8 (averaged to mono).

    Raises:
        InvalidAudio: a rate or channel count outside what uploads accept.
        ValueError: a width other than 1-4 bytes, or G.711 at another rate or channel count.
    """

    def __init__(self, encoding: Encoding, sample_rate_hz: int, *, width_bytes: int = 2, channels: int = 1) -> None:
        check_format(sample_rate_hz, channels)
        if encoding == "pcm" and width_bytes not in (1, 2, 3, 4):
            raise ValueError(f"PCM sample width must be 1 to 4 bytes, got {width_bytes}")
        if encoding != "pcm" and (sample_rate_hz != G711_RATE_HZ or channels != 1 or width_bytes != 1):
            raise ValueError("G.711 audio is 8 kHz mono, one byte per sample")
        self.encoding, self.sample_rate_hz, self.channels = encoding, sample_rate_hz, channels
        self.frame_bytes = (width_bytes if encoding == "pcm" else 1) * channels
        self.width_bytes = width_bytes if encoding == "pcm" else 1
        self._carry = b""
        self._converter = BlockConverter(sample_rate_hz, channels, float("inf"))

    def _linear(self, data: bytes) -> npt.NDArray[np.float32]:
        """Whole frames of `data` as float32 [frames, channels]."""
        if self.encoding == "pcmu":
            x = ULAW[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0
        elif self.encoding == "pcma":
            x = ALAW[np.frombuffer(data, dtype=np.uint8)].astype(np.float32) / 32768.0
        elif self.width_bytes == 3:  # 24-bit: widen to the top three bytes of an int32
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
            wide = np.zeros((len(raw), 4), dtype=np.uint8)
            wide[:, 1:] = raw
            x = wide.view("<i4")[:, 0].astype(np.float32) / 2147483648.0
        else:
            dtype, offset, scale = _WIDTHS[self.width_bytes]
            x = (np.frombuffer(data, dtype=dtype).astype(np.float32) - offset) / scale
        return x.reshape(-1, self.channels)

    def convert(self, data: bytes) -> Waveform:
        """Raw bytes -> float32 16 kHz mono samples [N] (N may be 0 while the resampler fills)."""
        data = self._carry + data
        cut = len(data) - len(data) % self.frame_bytes
        self._carry = data[cut:]
        return self._converter.convert(self._linear(data[:cut]))

    def flush(self) -> Waveform:
        """The resampler's delayed tail (a partial sample is dropped); the next call starts a new utterance."""
        tail = self._converter.convert(np.zeros((0, self.channels), np.float32), last=True)
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop the carried bytes and the resampler's state (a discarded utterance)."""
        self._carry = b""
        self._converter = BlockConverter(self.sample_rate_hz, self.channels, float("inf"))


class PcmRecording:
    """The audio of one utterance that arrives in pieces (Wyoming's `audio-chunk`s): converted as it comes, its
    memory held through `hold` (the request's reservation) as it grows, handed over whole by `finish`.

    Args:
        audio: the converter for the utterance's format.
        hold: called with the bytes the samples so far take; raises to refuse (e.g. MemoryBudgetFull).
    """

    def __init__(self, audio: StreamAudio, hold: Callable[[int], None]) -> None:
        self.audio, self._hold = audio, hold
        self._blocks: list[Waveform] = []
        self.samples = 0

    def add(self, data: bytes) -> Waveform:
        """Returns the new 16 kHz samples (float32 [N]).

        Raises: what `hold` raises (the samples are then not kept)."""
        block = self.audio.convert(data)
        self._hold(4 * (self.samples + len(block)))
        self._blocks.append(block)
        self.samples += len(block)
        return block

    def finish(self) -> DecodedAudio:
        """The whole utterance as 16 kHz samples (the resampler's tail included); the recording is then empty."""
        self._blocks.append(self.audio.flush())
        waveform = np.concatenate(self._blocks)
        self._blocks, self.samples = [], 0
        return DecodedAudio(waveform, self.audio.sample_rate_hz, self.audio.channels, "pcm")

    def clear(self) -> None:
        self._blocks, self.samples = [], 0


class SampleBuffer:
    """A live stream's growing float32 16 kHz samples, addressed by absolute stream sample, the head droppable
    (parakeet.pipeline.stream_session)."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)
        self.base = 0  # absolute sample of _data[0]
        self.end = 0  # absolute sample one past the last

    def append(self, x: Waveform) -> None:
        n = self.end - self.base
        if n + len(x) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), n + len(x)), dtype=np.float32)
            grown[:n] = self._data[:n]
            self._data = grown
        self._data[n : n + len(x)] = x
        self.end += len(x)

    @property
    def held(self) -> int:
        """Samples in memory now."""
        return self.end - self.base

    def slice(self, start: int, stop: int) -> Waveform:
        """Samples [start, stop) (absolute), a copy."""
        return self._data[max(start, self.base) - self.base : stop - self.base].copy()

    def drop_before(self, sample: int) -> None:
        cut = min(max(sample, self.base), self.end) - self.base
        if cut > 0:
            n = self.end - self.base
            self._data[: n - cut] = self._data[cut:n]
            self.base += cut
