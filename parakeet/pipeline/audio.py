"""Audio decoding: uploaded bytes in any common container -> float32 mono 16 kHz waveform.

libsndfile (soundfile) reads WAV, FLAC, OGG/Vorbis, Opus and MP3; PyAV (FFmpeg) reads the rest (M4A/AAC,
WebM, MP4...). soxr resamples. Limits are enforced while decoding, block by block, so a small file that
decodes to hours costs bounded memory. The server runs `decode_audio` only in subprocesses
(`parakeet.pipeline.decoder_pool`), so that a decoder crash on a crafted file cannot take the model's worker
down. This module knows nothing of HTTP or torch.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.errors import AudioTooLong, EmptyAudio, InvalidAudio, UnsupportedAudio

log = logging.getLogger("parakeet.audio")

MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 96_000
MAX_CHANNELS = 8
BLOCK_S = 1.0  # decode and check limits one second of source audio at a time


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded upload.

    Attributes:
        waveform: float32 mono samples at 16 kHz, shape [T], nominally in [-1, 1].
        source_sample_rate_hz: the file's own sample rate.
        source_channels: the file's channel count (downmixed by averaging).
        decoder: "soundfile" or "pyav".
    """

    waveform: npt.NDArray[np.float32]
    source_sample_rate_hz: int
    source_channels: int
    decoder: str

    @property
    def duration_s(self) -> float:
        """Duration in seconds at 16 kHz."""
        return len(self.waveform) / SAMPLE_RATE_HZ


class _Accumulator:
    """Downmixes, checks and resamples blocks of source audio, enforcing the duration cap as it goes."""

    def __init__(self, sample_rate_hz: int, channels: int, max_duration_s: float) -> None:
        _check_format(sample_rate_hz, channels)
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.max_duration_s = max_duration_s
        self.source_frames = 0
        self.resampler = (
            None
            if sample_rate_hz == SAMPLE_RATE_HZ
            else soxr.ResampleStream(sample_rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
        )
        self.blocks: list[npt.NDArray[np.float32]] = []

    def add(self, block: npt.NDArray[Any], *, last: bool = False) -> None:
        """Add a [frames, channels] float block (may be empty)."""
        self.source_frames += block.shape[0]
        duration_s = self.source_frames / self.sample_rate_hz
        if duration_s > self.max_duration_s:
            raise AudioTooLong(
                f"audio is longer than the limit of {self.max_duration_s:g} s "
                f"(decoding stopped after {duration_s:.1f} s)",
                param="file",
            )
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0].astype(np.float32)
        if not np.isfinite(mono).all():
            raise InvalidAudio("audio contains NaN or infinite sample values", param="file")
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=last)
        if mono.size:
            self.blocks.append(np.ascontiguousarray(mono, dtype=np.float32))

    def finish(self, decoder: str) -> DecodedAudio:
        if self.resampler is not None:
            self.add(np.zeros((0, self.channels), dtype=np.float32), last=True)
        if self.source_frames == 0:
            raise EmptyAudio("audio contains no samples", param="file")
        waveform = np.concatenate(self.blocks) if self.blocks else np.zeros(0, dtype=np.float32)
        return DecodedAudio(waveform, self.sample_rate_hz, self.channels, decoder)


def _check_format(sample_rate_hz: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidAudio(
            f"sample rate {sample_rate_hz} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz",
            param="file",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidAudio(f"{channels} audio channels is outside the supported range 1-{MAX_CHANNELS}", param="file")


def _decode_soundfile(data: bytes, max_duration_s: float) -> DecodedAudio | None:
    """Decode with libsndfile; None if libsndfile does not recognise the format."""
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    with f:
        acc = _Accumulator(int(f.samplerate), int(f.channels), max_duration_s)
        block_frames = max(1, int(f.samplerate * BLOCK_S))
        try:
            while True:
                block = f.read(frames=block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                acc.add(block)
        except (sf.LibsndfileError, RuntimeError) as exc:
            # A file cut short mid-stream: keep what decoded (README error table: "200 on the samples present").
            if acc.source_frames == 0:
                raise UnsupportedAudio("the audio stream is corrupt and no samples could be decoded") from exc
        return acc.finish("soundfile")


def _decode_pyav(data: bytes, max_duration_s: float) -> DecodedAudio:
    """Decode with PyAV (FFmpeg)."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise UnsupportedAudio(
            "the file is not audio in a supported format (WAV, FLAC, OGG/Vorbis, Opus, MP3, M4A/AAC, WebM)",
            param="file",
        ) from exc
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise UnsupportedAudio(
                "the file is not audio in a supported format: it holds no audio stream", param="file"
            )
        stream = streams[0]
        to_float = av.AudioResampler(format="fltp")  # sample-format conversion only; soxr resamples
        acc: _Accumulator | None = None
        try:
            for frame in container.decode(stream):
                assert isinstance(frame, av.AudioFrame)
                for converted in to_float.resample(frame):
                    planes = converted.to_ndarray()  # [channels, samples] float32
                    if acc is None:
                        acc = _Accumulator(int(converted.sample_rate), planes.shape[0], max_duration_s)
                    elif converted.sample_rate != acc.sample_rate_hz or planes.shape[0] != acc.channels:
                        raise InvalidAudio("the audio stream changes sample rate or channels mid-stream")
                    acc.add(planes.T)
        except (av.error.FFmpegError, ValueError) as exc:
            if acc is None or acc.source_frames == 0:
                raise UnsupportedAudio("the audio stream is corrupt and no samples could be decoded") from exc
        if acc is None:
            raise EmptyAudio("audio contains no samples", param="file")
        return acc.finish("pyav")


def decode_audio(data: bytes, *, max_duration_s: float) -> DecodedAudio:
    """Decode an uploaded file to float32 mono 16 kHz.

    Channels are averaged; any sample format (u8, s16, s24, s32, f32, f64) is scaled to [-1, 1] by the
    decoder; resampling uses soxr's HQ quality.

    Args:
        data: the file's bytes.
        max_duration_s: refuse audio longer than this, checked every `BLOCK_S` of decoded audio.

    Returns:
        The decoded audio.

    Raises:
        EmptyAudio: zero bytes, or no samples.
        UnsupportedAudio: not a format either decoder reads, or corrupt before the first sample.
        InvalidAudio: sample rate outside 8-96 kHz, 0 or more than 8 channels, NaN/Inf samples.
        AudioTooLong: longer than `max_duration_s`.
    """
    if not data:
        raise EmptyAudio("the uploaded file is empty (0 bytes)", param="file")
    decoded = _decode_soundfile(data, max_duration_s)
    return decoded if decoded is not None else _decode_pyav(data, max_duration_s)
