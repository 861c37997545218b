"""The diarizer (inference.SortformerDiarizer): its batched segments equal NeMo's own `diarize()` on the same audio
and model (a random tiny Sortformer: the real modules and post-processing, no speaker sense), loading fails with
one message naming PARAKEET_DIARIZATION_MODEL, and the two-speaker Sortformer trained here meets a DER bound
(pyannote.metrics) on voices it never heard that shuffled speakers fail. Speakers on words: test_speakers.py."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch

from inference import SortformerDiarizer, load_diarization_model
from parakeet.core.errors import ModelLoadError

import speech
from helpers import offline_hub

DER_BOUND = 0.10  # the trained two-speaker model: 0.002 on held-out voices, shuffled speakers 0.28 (BENCHMARKS)


def lines(segments: list[object]) -> list[str]:
    return sorted(f"{s.start_s:.3f} {s.end_s:.3f} speaker_{s.speaker}" for s in segments)  # type: ignore[attr-defined]


def test_diarizer_segments_equal_nemo_diarize_on_a_batch(tiny_sortformer_path: Path, tmp_path: Path) -> None:
    model = load_diarization_model(str(tiny_sortformer_path), torch.device("cpu"))
    diarizer = SortformerDiarizer(model, torch.device("cpu"), model_name="tiny")
    waves = [speech.conversation(seed, speakers).waveform for seed, speakers in [(1, 2), (2, 3), (3, 2)]]
    ours = diarizer.diarize(waves)
    paths = []
    for i, w in enumerate(waves):
        sf.write(tmp_path / f"c{i}.wav", w, 16000, subtype="FLOAT")
        paths.append(str(tmp_path / f"c{i}.wav"))
    theirs = model.diarize(audio=paths, batch_size=len(paths), verbose=False)
    assert [lines(o) for o in ours] == [sorted(t) for t in theirs]
    assert sum(len(o) for o in ours) >= 30  # speakers on and off in runs: not a comparison of empty outputs
    for o, w in zip(ours, waves, strict=True):
        assert all(0 <= s.start_s < s.end_s <= len(w) / 16000 + 0.08 for s in o)
        assert all(0 <= s.speaker < diarizer.max_speakers for s in o)
        assert o == sorted(o, key=lambda s: (s.start_s, s.speaker))


def test_diarizer_load_failures_name_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="PARAKEET_DIARIZATION_MODEL names a .nemo file that is not there"):
        load_diarization_model(str(tmp_path / "missing.nemo"), torch.device("cpu"))
    offline_hub(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_diarization_model("nvidia/diar_streaming_sortformer_4spk-v2", torch.device("cpu"))
    msg = str(info.value)
    assert "could not load model 'nvidia/diar_streaming_sortformer_4spk-v2'" in msg
    assert "not in the local Hugging Face cache" in msg and "PARAKEET_DIARIZATION_MODEL=" in msg


def der(diarizer: SortformerDiarizer, talks: list[Any], shuffle: bool = False) -> float:
    """pyannote.metrics' diarization error rate over `talks` (collar 0.25 s around each reference boundary, as in
    NIST's evaluations); `shuffle`: every hypothesis segment gets a random speaker (the control)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric, rng = DiarizationErrorRate(collar=0.25), random.Random(0)
    for talk in talks:
        reference, hypothesis = Annotation(), Annotation()
        for i, (k, start, end, _) in enumerate(talk.turns):
            reference[Segment(start, end), i] = f"speaker {k}"
        for i, s in enumerate(diarizer.diarize([talk.waveform])[0]):
            hypothesis[Segment(s.start_s, s.end_s), i] = rng.randrange(2) if shuffle else s.speaker
        metric(reference, hypothesis, uem=Timeline([Segment(0, len(talk.waveform) / 16000)]))  # the whole talk
    return float(abs(metric))


def test_the_trained_two_speaker_diarizer_meets_a_der_bound_on_held_out_voices(
    two_speaker_sortformer_path: Path,
) -> None:
    """The two-speaker Sortformer trained here (build_test_models.py diarizer) on conversations of voices it never
    heard: its DER is under the bound, and the same segments with shuffled speakers are far over it."""
    from build_test_models import two_voice_conversation

    model = load_diarization_model(str(two_speaker_sortformer_path), torch.device("cpu"))
    diarizer = SortformerDiarizer(model, torch.device("cpu"), model_name="two-speaker")
    talks = [two_voice_conversation(50_777 + i, speech.HELD_OUT_VOICES) for i in range(20)]
    measured, control = der(diarizer, talks), der(diarizer, talks, shuffle=True)
    print(f"held-out DER {measured:.3f}, shuffled {control:.3f}")
    assert measured < DER_BOUND < control
