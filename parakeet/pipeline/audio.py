"""Audio decoding: uploaded bytes in any common container -> float32 mono 16 kHz waveform, block by block.

libsndfile (soundfile) reads WAV, FLAC, OGG/Vorbis, Opus and MP3; PyAV (FFmpeg) reads the rest (M4A/AAC,
WebM, MP4...). soxr resamples. `iter_audio` yields the file's header (rates, channels, and how many samples it
will decode to, where the container says) and then the waveform one second of source audio at a time, enforcing
the limits as it goes, so a small file that decodes to hours costs bounded memory and its size is known before
its samples exist. The server runs it only in subprocesses (`parakeet.pipeline.decoder_pool`), so that a decoder
crash on a crafted file cannot take the model's worker down. This module knows nothing of HTTP or torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from parakeet.core.engine import SAMPLE_RATE_HZ, Waveform
from parakeet.core.errors import AudioTooLong, EmptyAudio, InvalidAudio, UnsupportedAudio

MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 96_000
MAX_CHANNELS = 8
BLOCK_S = 1.0  # decode and check limits one second of source audio at a time
DECODERS = ("soundfile", "pyav", "pcm")


@dataclass(frozen=True)
class AudioHeader:
    """What a file says about itself, before its samples are decoded.

    Attributes:
        source_sample_rate_hz: the file's own sample rate.
        source_channels: its channel count (downmixed by averaging).
        decoder: "soundfile" or "pyav" (or "pcm" for raw stream audio).
        expected_samples: samples at 16 kHz it will decode to, from the container's header (exact for WAV and
            FLAC, an estimate elsewhere); None when the container does not say.
    """

    source_sample_rate_hz: int
    source_channels: int
    decoder: str
    expected_samples: int | None


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded upload.

    Attributes:
        waveform: float32 mono samples at 16 kHz, shape [T], nominally in [-1, 1].
        source_sample_rate_hz: the file's own sample rate.
        source_channels: the file's channel count (downmixed by averaging).
        decoder: "soundfile", "pyav" or "pcm".
    """

    waveform: npt.NDArray[np.float32]
    source_sample_rate_hz: int
    source_channels: int
    decoder: str

    @property
    def duration_s(self) -> float:
        """Duration in seconds at 16 kHz."""
        return len(self.waveform) / SAMPLE_RATE_HZ


def check_format(sample_rate_hz: int, channels: int) -> None:
    """Raises: InvalidAudio: a sample rate outside 8-96 kHz, or 0 or more than 8 channels."""
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidAudio(
            f"sample rate {sample_rate_hz} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidAudio(f"{channels} audio channels is outside the supported range 1-{MAX_CHANNELS}")


def expected_samples(source_frames: float, sample_rate_hz: int, max_duration_s: float) -> int:
    """16 kHz samples that `source_frames` at `sample_rate_hz` resample to, at most `max_duration_s` (plus one
    second: the duration check runs per block) and at least 0."""
    frames = min(max(source_frames, 0.0), (max_duration_s + BLOCK_S) * sample_rate_hz)
    return math.ceil(frames * SAMPLE_RATE_HZ / sample_rate_hz)


class BlockConverter:
    """Downmixes, checks and resamples blocks of source audio to float32 16 kHz mono, enforcing the duration cap as
    it goes. soxr's streaming resampler (HQ) keeps its state between blocks."""

    def __init__(self, sample_rate_hz: int, channels: int, max_duration_s: float) -> None:
        """Raises: InvalidAudio: as `check_format`."""
        check_format(sample_rate_hz, channels)
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.max_duration_s = max_duration_s
        self.source_frames = 0
        self.resampler = (
            None
            if sample_rate_hz == SAMPLE_RATE_HZ
            else soxr.ResampleStream(sample_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
        )

    def convert(self, block: npt.NDArray[Any], *, last: bool = False) -> Waveform:
        """A [frames, channels] float block (may be empty) -> its 16 kHz mono samples (may be empty).

        Raises:
            AudioTooLong: the audio so far passed `max_duration_s`.
            InvalidAudio: NaN or infinite samples.
        """
        self.source_frames += block.shape[0]
        duration_s = self.source_frames / self.sample_rate_hz
        if duration_s > self.max_duration_s:
            raise AudioTooLong(
                f"audio is longer than the limit of {self.max_duration_s:g} s "
                f"(decoding stopped after {duration_s:.1f} s)"
            )
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].astype(np.float32)
        if not np.isfinite(mono).all():
            raise InvalidAudio("audio contains NaN or infinite sample values")
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=last)
        return np.ascontiguousarray(mono, dtype=np.float32)

    def finish(self) -> Waveform:
        """The resampler's delayed tail.

        Raises:
            EmptyAudio: no sample was converted at all.
        """
        if self.source_frames == 0:
            raise EmptyAudio("audio contains no samples")
        if self.resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self.convert(np.zeros((0, self.channels), dtype=np.float32), last=True)


def _iter_soundfile(data: bytes, max_duration_s: float) -> Iterator[AudioHeader | Waveform] | None:
    """Decode with libsndfile; None if libsndfile does not recognise the format."""
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None

    def blocks() -> Iterator[AudioHeader | Waveform]:
        with f:
            rate, channels = int(f.samplerate), int(f.channels)
            converter = BlockConverter(rate, channels, max_duration_s)
            yield AudioHeader(rate, channels, "soundfile", expected_samples(float(f.frames), rate, max_duration_s))
            block_frames = max(1, int(rate * BLOCK_S))
            try:
                while (block := f.read(frames=block_frames, dtype="float32", always_2d=True)).shape[0]:
                    yield converter.convert(block)
            except (sf.LibsndfileError, RuntimeError) as exc:
                # A file cut short mid-stream: keep what decoded (README error table: "200 on the samples present").
                if converter.source_frames == 0:
                    raise UnsupportedAudio("the audio stream is corrupt and no samples could be decoded") from exc
            yield converter.finish()

    return blocks()


_NOT_AUDIO = "the file is not audio in a supported format (WAV, FLAC, OGG/Vorbis, Opus, MP3, M4A/AAC, WebM)"


def _iter_pyav(data: bytes, max_duration_s: float) -> Iterator[AudioHeader | Waveform]:
    """Decode with PyAV (FFmpeg). The header comes with the first decoded frame (the rate and channels of what
    FFmpeg actually decodes); its expected length is the container's duration, when it states one."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise UnsupportedAudio(_NOT_AUDIO) from exc
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise UnsupportedAudio("the file is not audio in a supported format: it holds no audio stream")
        stream = streams[0]
        duration_s = container.duration / 1_000_000 if container.duration else None
        to_float = av.AudioResampler(format="fltp")  # sample-format conversion only; soxr resamples
        converter: BlockConverter | None = None
        try:
            for frame in container.decode(stream):
                assert isinstance(frame, av.AudioFrame)
                for converted in to_float.resample(frame):
                    planes = converted.to_ndarray()  # [channels, samples] float32
                    rate = int(converted.sample_rate)
                    if converter is None:
                        converter = BlockConverter(rate, planes.shape[0], max_duration_s)
                        expected = expected_samples(duration_s * rate, rate, max_duration_s) if duration_s else None
                        yield AudioHeader(rate, planes.shape[0], "pyav", expected)
                    elif rate != converter.sample_rate_hz or planes.shape[0] != converter.channels:
                        raise InvalidAudio("the audio stream changes sample rate or channels mid-stream")
                    yield converter.convert(planes.T)
        except (av.error.FFmpegError, ValueError) as exc:
            if converter is None or converter.source_frames == 0:
                raise UnsupportedAudio("the audio stream is corrupt and no samples could be decoded") from exc
        if converter is None:
            raise EmptyAudio("audio contains no samples")
        yield converter.finish()


def iter_audio(data: bytes, *, max_duration_s: float) -> Iterator[AudioHeader | Waveform]:
    """Decode an uploaded file to float32 mono 16 kHz: first its `AudioHeader`, then its samples block by block.

    Channels are averaged; any sample format (u8, s16, s24, s32, f32, f64) is scaled to [-1, 1] by the decoder;
    resampling uses soxr's HQ quality.

    Args:
        data: the file's bytes.
        max_duration_s: refuse audio longer than this, checked every `BLOCK_S` of decoded audio.

    Yields:
        One AudioHeader, then float32 blocks [N] (some may be empty).

    Raises (from the iterator, before or after the header):
        EmptyAudio: zero bytes, or no samples.
        UnsupportedAudio: not a format either decoder reads, or corrupt before the first sample.
        InvalidAudio: sample rate outside 8-96 kHz, 0 or more than 8 channels, NaN/Inf samples.
        AudioTooLong: longer than `max_duration_s`.
    """
    if not data:
        raise EmptyAudio("the uploaded file is empty (0 bytes)")
    stream = _iter_soundfile(data, max_duration_s)
    yield from stream if stream is not None else _iter_pyav(data, max_duration_s)


def decode_audio(data: bytes, *, max_duration_s: float) -> DecodedAudio:
    """`iter_audio`, collected into one waveform (tests and tools; the server decodes in subprocesses).

    Raises:
        Everything `iter_audio` raises.
    """
    items = iter_audio(data, max_duration_s=max_duration_s)
    header = next(items)
    assert isinstance(header, AudioHeader)
    blocks = [b for b in items if isinstance(b, np.ndarray)]
    waveform = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return DecodedAudio(waveform, header.source_sample_rate_hz, header.source_channels, header.decoder)
