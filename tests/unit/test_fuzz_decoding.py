"""Property tests of audio decoding through the worker's own decoder pool (subprocesses): any bytes, and random
mutations of valid WAV, FLAC, OGG/Vorbis and MP3 files, give either a waveform within the limits or one of the error
table's audio errors — never another exception, never a dead pool. Hypothesis (https://hypothesis.readthedocs.io),
derandomized and bounded so CI runs the same examples every time; bench/fuzz_decoder.py runs longer by hand."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parakeet.core import errors
from parakeet.pipeline.audio import DecodedAudio
from parakeet.pipeline.decoder_pool import AudioDecoderPool

MAX_S = 30.0
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
AUDIO_ERRORS = (errors.AudioError, errors.DecoderUnavailable)


def _seed(fmt: str, subtype: str | None = None, rate: int = 16000) -> bytes:
    t = np.arange(int(0.4 * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = [_seed("WAV", "PCM_16"), _seed("FLAC"), _seed("OGG", "VORBIS"), _seed("MP3", rate=22050)]


@pytest.fixture(scope="module")
def pool() -> Iterator[tuple[asyncio.AbstractEventLoop, AudioDecoderPool]]:
    loop = asyncio.new_event_loop()
    decoders = AudioDecoderPool(workers=2, timeout_s=20.0, memory_limit_bytes=2 * 1024**3)
    loop.run_until_complete(decoders.start())
    yield loop, decoders
    loop.run_until_complete(decoders.close())
    loop.close()


def check(pool: tuple[asyncio.AbstractEventLoop, AudioDecoderPool], data: bytes) -> Any:
    loop, decoders = pool
    try:
        out = loop.run_until_complete(decoders.decode(data, max_duration_s=MAX_S))
    except AUDIO_ERRORS as exc:
        assert exc.message and exc.code  # one of the error table's rows (README "Errors")
        return exc
    assert isinstance(out, DecodedAudio)
    w = out.waveform
    assert w.dtype == np.float32 and w.ndim == 1 and len(w) <= MAX_S * 16000 + 16000
    assert np.isfinite(w).all()
    return out


def test_the_seeds_decode(pool: Any) -> None:
    assert all(isinstance(check(pool, s), DecodedAudio) for s in SEEDS)


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_are_refused_cleanly(pool: Any, data: bytes) -> None:
    check(pool, data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "zero"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif data:
            data[pos : pos + 16] = bytes(len(data[pos : pos + 16]))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_files_decode_or_are_refused_cleanly(pool: Any, data: bytes) -> None:
    check(pool, data)


def test_the_pool_still_decodes_after_the_fuzzing(pool: Any) -> None:
    assert isinstance(check(pool, SEEDS[0]), DecodedAudio)
