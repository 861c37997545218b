"""Test helper: encode a float32 mono 16 kHz waveform into the containers, rates, sample formats and
channel counts that the server accepts (soundfile for WAV/FLAC/OGG/MP3, PyAV for M4A/AAC and WebM)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr


@dataclass(frozen=True)
class Encoding:
    """How to encode: container (file extension), sample rate, channels, soundfile subtype or codec."""

    ext: str
    sample_rate_hz: int
    channels: int
    subtype: str | None = None  # soundfile subtype (PCM_16, PCM_U8, FLOAT, VORBIS...) or None for PyAV

    @property
    def name(self) -> str:
        return f"{self.ext}-{self.subtype or 'default'}-{self.sample_rate_hz}Hz-{self.channels}ch"


# One of every container the server accepts, over rates 8-96 kHz, sample formats and 1-8 channels.
ENCODINGS = [
    Encoding("wav", 16000, 1, "PCM_16"),
    Encoding("wav", 8000, 1, "PCM_U8"),
    Encoding("wav", 22050, 2, "PCM_24"),
    Encoding("wav", 44100, 4, "PCM_32"),
    Encoding("wav", 96000, 1, "FLOAT"),
    Encoding("wav", 48000, 8, "DOUBLE"),
    Encoding("flac", 44100, 2, "PCM_16"),
    Encoding("flac", 12000, 1, "PCM_24"),
    Encoding("ogg", 32000, 1, "VORBIS"),
    Encoding("ogg", 48000, 2, "OPUS"),
    Encoding("opus", 48000, 1, "OPUS"),
    Encoding("mp3", 44100, 2, "MPEG_LAYER_III"),
    Encoding("mp3", 24000, 1, "MPEG_LAYER_III"),
    Encoding("m4a", 24000, 1, None),
    Encoding("m4a", 48000, 2, None),
    Encoding("webm", 48000, 1, None),
]

_SF_FORMAT = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "opus": "OGG", "mp3": "MP3"}
_AV = {"m4a": ("mp4", "aac"), "webm": ("webm", "libopus")}


def multichannel(waveform_16k: npt.NDArray[np.float32], enc: Encoding) -> npt.NDArray[np.float32]:
    """Resample to the encoding's rate and spread over its channels, shape [T, C]."""
    w = waveform_16k if enc.sample_rate_hz == 16000 else soxr.resample(waveform_16k, 16000, enc.sample_rate_hz)
    gains = np.linspace(1.0, 0.8, enc.channels, dtype=np.float32)  # channels differ a little, like real ones
    return (w[:, None] * gains[None, :] * 0.9).astype(np.float32)


def encode(waveform_16k: npt.NDArray[np.float32], enc: Encoding) -> bytes:
    """Encode a float32 mono 16 kHz waveform as `enc` and return the file's bytes."""
    data = multichannel(waveform_16k, enc)
    buf = io.BytesIO()
    if enc.ext in _SF_FORMAT:
        sf.write(buf, data, enc.sample_rate_hz, format=_SF_FORMAT[enc.ext], subtype=enc.subtype)
        return buf.getvalue()
    fmt, codec = _AV[enc.ext]
    layout = {1: "mono", 2: "stereo"}[enc.channels]
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=enc.sample_rate_hz, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data.T), format="fltp", layout=layout
        )  # planar float [C, T]
        frame.sample_rate = enc.sample_rate_hz
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def wav_bytes(data: npt.NDArray[np.float32], sample_rate_hz: int = 16000, subtype: str = "PCM_16") -> bytes:
    """A WAV file of `data` ([T] or [T, C])."""
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate_hz, format="WAV", subtype=subtype)
    return buf.getvalue()


def misbehaving_decode(data: bytes, max_duration_s: float) -> Iterator[object]:
    """A decoder for AudioDecoderPool tests: b"crash" kills its process with SIGSEGV (as a libsndfile or
    FFmpeg bug on a crafted file would), b"hang" never returns, anything else decodes normally."""
    import os
    import signal
    import time

    from parakeet.pipeline.decoder_child import decode_in_child

    if data == b"crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if data == b"hang":
        time.sleep(3600)
    yield from decode_in_child(data, max_duration_s)


def unknown_length_decode(data: bytes, max_duration_s: float) -> Iterator[object]:
    """A decoder for AudioDecoderPool tests: decodes normally, but its header does not say how long the file is
    (as for a stream without a duration), so the pool must grow its buffer as samples come."""
    from dataclasses import replace

    from parakeet.pipeline.audio import AudioHeader
    from parakeet.pipeline.decoder_child import decode_in_child

    for item in decode_in_child(data, max_duration_s):
        yield replace(item, expected_samples=None) if isinstance(item, AudioHeader) else item
