"""Synthetic spoken digits from espeak-ng, for training the digits test model and for test fixtures.

Speaks digit words ("three seven one") with the espeak-ng command-line synthesizer (Debian package
`espeak-ng`) and returns float32 mono 16 kHz waveforms. It does not encode containers (tests do that).

For machines without espeak-ng (a lent GPU box runs the benchmarks): `SPEECH_RECORD=speech.npz` saves
every waveform spoken by a run at its exit, and `SPEECH_CACHE=speech.npz` answers from such a file
(a text not in it raises), so a benchmark there speaks exactly what the same command spoke here.
"""

from __future__ import annotations

import atexit
import io
import os
import random
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE_HZ = 16_000

# Voices used for training (docs/nemo.md: 4 accents x 5 variants = 20 voices).
TRAIN_VOICES = tuple(
    f"{base}{variant}"
    for base in ("en-us", "en-gb", "en-gb-x-rp", "en-029")
    for variant in ("", "+m3", "+f2", "+f4", "+m7")
)
# Voices never seen in training, to check that the model generalises.
HELD_OUT_VOICES = ("en-us+m1", "en-gb-scotland", "en-gb-x-gbclan+f3", "en-us+f5")


@dataclass(frozen=True)
class Utterance:
    """One synthesized utterance: its words and its float32 mono 16 kHz waveform of shape [T]."""

    text: str
    waveform: npt.NDArray[np.float32]
    voice: str
    speed_wpm: int


def require_espeak() -> str:
    """Return the path of espeak-ng.

    Raises:
        RuntimeError: espeak-ng is not installed (apt-get install espeak-ng).
    """
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed: run `apt-get install -y espeak-ng`")
    return path


_cache: dict[str, npt.NDArray[np.float32]] | None = None
_recorded: dict[str, npt.NDArray[np.float32]] = {}


def _save_recorded() -> None:
    path = os.environ["SPEECH_RECORD"]
    previous = dict(np.load(path)) if os.path.exists(path) else {}
    pcm16 = {k: np.round(np.clip(w, -1, 1) * 32767).astype(np.int16) for k, w in _recorded.items()}
    np.savez_compressed(path, **(previous | pcm16))  # 16-bit PCM: half the size, inaudibly different


if os.environ.get("SPEECH_RECORD"):
    atexit.register(_save_recorded)


def speak(text: str, voice: str = "en-us", speed_wpm: int = 160) -> npt.NDArray[np.float32]:
    """Synthesize `text` with espeak-ng.

    Args:
        text: the words to speak.
        voice: an espeak-ng voice name, optionally with a variant (`en-gb+f2`).
        speed_wpm: speaking rate in words per minute (espeak-ng `-s`).

    Returns:
        float32 mono waveform at 16 kHz, shape [T], in [-1, 1].

    Raises:
        RuntimeError: espeak-ng is missing or failed, or SPEECH_CACHE lacks this text.
    """
    global _cache
    key = f"{voice}|{speed_wpm}|{text}"
    if os.environ.get("SPEECH_CACHE"):
        if _cache is None:
            stored = np.load(os.environ["SPEECH_CACHE"])
            _cache = {k: v.astype(np.float32) / 32767 for k, v in stored.items()}
        if key not in _cache:
            raise RuntimeError(f"SPEECH_CACHE has no waveform for {key!r}: record it with the same command")
        return _cache[key]
    out = subprocess.run(
        [require_espeak(), "-v", voice, "-s", str(speed_wpm), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    data, rate = sf.read(io.BytesIO(out), dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE_HZ:
        data = soxr.resample(data, rate, SAMPLE_RATE_HZ, quality="HQ")
    wave = np.ascontiguousarray(data, dtype=np.float32)
    if os.environ.get("SPEECH_RECORD"):
        _recorded[key] = wave
    return wave


def random_digits(rng: random.Random, min_len: int = 1, max_len: int = 5) -> str:
    """A random sequence of `min_len`..`max_len` digit words, e.g. "four zero nine"."""
    return " ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(min_len, max_len)))


def random_utterance(seed: int, voices: tuple[str, ...] = TRAIN_VOICES) -> Utterance:
    """A seeded random digit utterance: voice from `voices`, speed 130-210 wpm (docs/nemo.md recipe)."""
    rng = random.Random(seed)
    text = random_digits(rng)
    voice = rng.choice(voices)
    speed = rng.randint(130, 210)
    return Utterance(text=text, waveform=speak(text, voice, speed), voice=voice, speed_wpm=speed)


@dataclass(frozen=True)
class Conversation:
    """A synthetic conversation: its float32 16 kHz waveform [T] and who spoke when, `turns` of (speaker index
    in order of first appearance, start s, end s, words), the reference for diarization error rates."""

    waveform: npt.NDArray[np.float32]
    turns: tuple[tuple[int, float, float, str], ...]
    voices: tuple[str, ...]


def conversation(
    seed: int, speakers: int = 2, voices: tuple[str, ...] = TRAIN_VOICES, max_overlap_s: float = 0.3
) -> Conversation:
    """`speakers` distinct voices from `voices` taking 4-8 turns of 2-5 digits each: every speaker once first (so
    speaker k arrives k-th), then at random; between turns a pause of up to 0.6 s or an overlap of up to
    `max_overlap_s` (0: turns never overlap, and the words are the turns' words in order)."""
    rng = random.Random(seed)
    chosen = tuple(rng.sample(voices, speakers))
    order = list(range(speakers)) + [rng.randrange(speakers) for _ in range(rng.randint(4, 8) - speakers)]
    audio = np.zeros(int(rng.uniform(0.1, 0.5) * SAMPLE_RATE_HZ), np.float32)
    turns: list[tuple[int, float, float, str]] = []
    for k in order:
        text = random_digits(rng, 2, 5)
        w = speak(text, chosen[k], rng.randint(140, 200))
        gap = rng.uniform(-max_overlap_s, 0.6) if max_overlap_s > 0 else rng.uniform(0.2, 0.6)
        start = len(audio) if not turns else max(0, len(audio) + int(gap * SAMPLE_RATE_HZ))
        end = start + len(w)
        if end > len(audio):
            audio = np.concatenate([audio, np.zeros(end - len(audio), np.float32)])
        audio[start:end] += w
        turns.append((k, start / SAMPLE_RATE_HZ, end / SAMPLE_RATE_HZ, text))
    audio = np.concatenate([audio, np.zeros(int(0.3 * SAMPLE_RATE_HZ), np.float32)])
    return Conversation(audio, tuple(turns), chosen)
