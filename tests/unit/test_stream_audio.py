"""parakeet/pipeline/stream_audio.py: live protocols' raw audio becomes the same 16 kHz samples an uploaded WAV of
it decodes to (so a Wyoming or Realtime transcript equals `/transcribe`'s), whatever the chunking. Oracles:
CPython's audioop for G.711, libsndfile (soundfile) and the upload decoder for PCM."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import soundfile as sf
import soxr

from parakeet.core.errors import InvalidAudio
from parakeet.pipeline.audio import decode_audio
from parakeet.pipeline.stream_audio import ALAW, ULAW, PcmRecording, StreamAudio
from tests.support import speech


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speech.speak("seven one four", "en-us", 160)


def wav(data: np.ndarray, rate: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def pcm_of(wav_bytes: bytes) -> bytes:
    """The raw sample bytes of a WAV: its `data` chunk."""
    at = wav_bytes.index(b"data")
    size = int.from_bytes(wav_bytes[at + 4 : at + 8], "little")
    return wav_bytes[at + 8 : at + 8 + size]


def convert_in_chunks(audio: StreamAudio, raw: bytes, chunk: int) -> np.ndarray:
    parts = [audio.convert(raw[i : i + chunk]) for i in range(0, len(raw), chunk)]
    return np.concatenate([*parts, audio.flush()])


def test_g711_tables_equal_audioop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    codes = bytes(range(256))
    assert ULAW.tolist() == np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2").tolist()
    assert ALAW.tolist() == np.frombuffer(audioop.alaw2lin(codes, 2), "<i2").tolist()


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "width"),
    [(16000, 1, "PCM_16", 2), (22050, 1, "PCM_16", 2), (44100, 2, "PCM_16", 2), (48000, 1, "PCM_24", 3),
     (8000, 1, "PCM_U8", 1), (24000, 3, "PCM_32", 4)],
)  # fmt: skip
def test_pcm_in_any_chunking_equals_the_upload_decoder(
    voice: np.ndarray, rate: int, channels: int, subtype: str, width: int
) -> None:
    x = soxr.resample(voice, 16000, rate) if rate != 16000 else voice
    data = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x
    file = wav(np.clip(data, -1, 1), rate, subtype)
    uploaded = decode_audio(file, max_duration_s=60).waveform
    for chunk in (2048, 1185, len(file)):  # Wyoming's chunks, an odd size that splits samples, all at once
        streamed = convert_in_chunks(
            StreamAudio("pcm", rate, width_bytes=width, channels=channels), pcm_of(file), chunk
        )
        np.testing.assert_array_equal(streamed, uploaded)


def test_g711_mu_law_equals_the_same_audio_uploaded(voice: np.ndarray) -> None:
    file = wav(soxr.resample(voice, 16000, 8000), 8000, "ULAW")
    uploaded = decode_audio(file, max_duration_s=60).waveform
    streamed = convert_in_chunks(StreamAudio("pcmu", 8000, width_bytes=1), pcm_of(file), 160)
    np.testing.assert_allclose(streamed, uploaded, atol=1e-6)  # libsndfile's own mu-law table, the same values


def test_a_partial_sample_waits_for_the_next_chunk_and_reset_drops_it() -> None:
    audio = StreamAudio("pcm", 16000)
    assert len(audio.convert(b"\x01")) == 0
    assert audio.convert(b"\x00\x02\x00").tolist() == [1 / 32768, 2 / 32768]
    audio.convert(b"\x07")
    audio.reset()
    assert audio.convert(b"\x03\x00").tolist() == [3 / 32768]


def test_formats_outside_what_uploads_accept_are_refused() -> None:
    with pytest.raises(InvalidAudio, match="sample rate 4000 Hz"):
        StreamAudio("pcm", 4000)
    with pytest.raises(InvalidAudio, match="9 audio channels"):
        StreamAudio("pcm", 16000, channels=9)
    with pytest.raises(ValueError, match="width must be 1 to 4 bytes"):
        StreamAudio("pcm", 16000, width_bytes=5)


def test_a_recording_holds_its_memory_as_it_grows_and_hands_over_the_whole() -> None:
    held: list[int] = []
    recording = PcmRecording(StreamAudio("pcm", 16000), held.append)
    for _ in range(3):
        recording.add(np.zeros(1600, "<i2").tobytes())
    audio = recording.finish()
    assert held == [4 * 1600, 4 * 3200, 4 * 4800]
    assert (audio.duration_s, audio.source_sample_rate_hz, audio.decoder) == (0.3, 16000, "pcm")
