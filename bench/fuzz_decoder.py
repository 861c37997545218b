"""Coverage-guided fuzzing of the audio decoder with atheris (https://github.com/google/atheris), for longer runs by
hand than the property tests in tests/unit/test_fuzz_decoding.py do in CI.

It calls `parakeet.pipeline.audio.decode_audio` (what every decoder subprocess runs) in this process on mutated
inputs, starting from a corpus of small valid WAV/FLAC/OGG/MP3 files it writes itself. Allowed outcomes: a finite
float32 waveform, or one of the error table's audio errors. Anything else is a finding: atheris saves the input as
crash-<hash>; keep it under tests/fuzz_regressions/ (the property tests replay every file there). A segfault inside
libsndfile or FFmpeg is a finding too: the server survives those (its decoders are subprocesses) but it is worth a
report upstream.

    .venv/bin/pip install atheris==3.0.0
    .venv/bin/python -m bench fuzz_decoder -atheris_runs=100000 -max_len=8192 /tmp/fuzz_corpus
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

with atheris.instrument_imports():
    import soundfile as sf

    from parakeet.core import errors
    from parakeet.pipeline.audio import decode_audio


def write_corpus(folder: Path) -> None:
    """Seed inputs: 0.2 s of a tone in each container the server reads."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(3200) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for name, fmt, subtype in (("a.wav", "WAV", "PCM_16"), ("a.flac", "FLAC", None), ("a.ogg", "OGG", "VORBIS"),
                               ("a.mp3", "MP3", None)):  # fmt: skip
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format=fmt, subtype=subtype)
        (folder / name).write_bytes(buf.getvalue())


def one_input(data: bytes) -> None:
    try:
        out = decode_audio(data, max_duration_s=30.0)
    except (errors.AudioError, errors.DecoderUnavailable):
        return
    assert out.waveform.dtype == np.float32 and np.isfinite(out.waveform).all()


def main() -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and not any(corpus.glob("*")):
        write_corpus(corpus)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
