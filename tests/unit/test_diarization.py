"""The diarizer (inference.SortformerDiarizer): its batched segments equal NeMo's own `diarize()` on the same audio
and model (a random tiny Sortformer: the real modules and post-processing, no speaker sense), loading fails with
one message naming PARAKEET_DIARIZATION_MODEL, and the two-speaker Sortformer trained here meets a DER bound
(pyannote.metrics) on voices it never heard that shuffled speakers fail. Speakers on words: test_speakers.py."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from inference import SortformerDiarizer, load_diarization_model, mel_features
from parakeet.core.errors import ModelLoadError
from tests.support import speech

from helpers import offline_hub

DER_BOUND = 0.10  # the trained two-speaker model: 0.002 on held-out voices, shuffled speakers 0.28 (BENCHMARKS)


def lines(segments: list[object]) -> list[str]:
    return sorted(f"{s.start_s:.3f} {s.end_s:.3f} speaker_{s.speaker}" for s in segments)  # type: ignore[attr-defined]


def test_each_file_gets_nemo_diarize_segments_and_a_batch_does_not_change_them(
    tiny_sortformer_path: Path, tmp_path: Path
) -> None:
    """Alone, a file's segments equal NeMo's `diarize()` on it; in a padded batch of mixed lengths its speaker
    probabilities equal those it gets alone to float rounding (NeMo scales a batch by the batch's peak; the diarizer
    scales each file by its own)."""
    model = load_diarization_model(str(tiny_sortformer_path), torch.device("cpu"))
    diarizer = SortformerDiarizer(model, torch.device("cpu"), model_name="tiny")
    waves = [speech.conversation(seed, speakers).waveform for seed, speakers in [(1, 2), (2, 3), (3, 2)]]
    waves[1] = waves[1] * 0.2  # a quiet file beside loud ones
    alone = [diarizer.diarize([w])[0] for w in waves]
    for i, w in enumerate(waves):
        sf.write(tmp_path / f"c{i}.wav", w, 16000, subtype="FLOAT")
    theirs = [model.diarize(audio=[str(tmp_path / f"c{i}.wav")], batch_size=1, verbose=False)[0] for i in range(3)]
    assert [lines(a) for a in alone] == [sorted(t) for t in theirs]
    assert sum(len(a) for a in alone) >= 30  # speakers on and off in runs: not a comparison of empty outputs
    batched = diarizer.speaker_probabilities(waves)
    for p, w in zip(batched, waves, strict=True):
        single = diarizer.speaker_probabilities([w])[0]
        assert p.shape == single.shape == (math.ceil(len(w) / 1280), diarizer.max_speakers)
        torch.testing.assert_close(p, single, atol=1e-4, rtol=0)
    for o, w in zip(diarizer.diarize(waves), waves, strict=True):
        assert all(0 <= s.start_s < s.end_s <= len(w) / 16000 + 0.08 for s in o)
        assert all(0 <= s.speaker < diarizer.max_speakers for s in o)
        assert o == sorted(o, key=lambda s: (s.start_s, s.speaker))


def test_chunked_mel_features_equal_the_whole_files(tiny_sortformer_path: Path) -> None:
    """Features computed a chunk at a time (bounded memory on long audio) equal the preprocessor's on the whole
    waveform, at chunk sizes that do and do not fall on a hop, and so do the segments."""
    model = load_diarization_model(str(tiny_sortformer_path), torch.device("cpu"))
    wave = np.concatenate([speech.conversation(seed, 2).waveform for seed in (4, 5, 6)])
    x = torch.from_numpy(wave)
    with torch.inference_mode():
        whole, n = model.preprocessor(input_signal=x[None], length=torch.tensor([len(x)]))
        for chunk in (16_000, 3 * 16_000 + 77, len(x) - 1):
            chunked = torch.full((whole.shape[1], int(n[0])), float("nan"))
            mel_features(model.preprocessor, x, chunk, chunked)
            torch.testing.assert_close(chunked, whole[0, :, : int(n[0])], atol=1e-5, rtol=0)
    plain = SortformerDiarizer(model, torch.device("cpu"), model_name="tiny")
    chunked_diarizer = SortformerDiarizer(model, torch.device("cpu"), model_name="tiny", feature_chunk_s=3.1)
    assert chunked_diarizer.diarize([wave]) == plain.diarize([wave])
    assert model.preprocessor.featurizer.normalize == "per_feature"  # restored after the chunks


def test_the_streaming_sortformer_batch_equals_each_file_alone_and_nemo() -> None:
    """The streaming model (speaker cache, several 15 s chunks): our steps equal NeMo's `forward` on one file, and
    a batch of mixed lengths gives each file what it gets alone; it takes any length (no offline limit)."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    from tests.support.build_test_models import sortformer_config

    torch.manual_seed(0)
    model = SortformerEncLabelModel(sortformer_config(2, 64, 80, streaming=True)).eval()
    diarizer = SortformerDiarizer(model, torch.device("cpu"), model_name="streaming", feature_chunk_s=7.0)
    assert diarizer.max_audio_s is None
    talks = [[speech.conversation(seed + k, 2).waveform for k in range(n)] for seed, n in [(7, 4), (9, 1)]]
    waves = [np.concatenate(t) for t in talks]
    with torch.inference_mode():
        theirs = model.forward(
            audio_signal=torch.from_numpy(waves[0])[None], audio_signal_length=torch.tensor([len(waves[0])])
        )[0]
    alone = [diarizer.speaker_probabilities([w])[0] for w in waves]
    assert len(waves[0]) / 16000 > 30  # more than two of the model's 188-frame chunks
    torch.testing.assert_close(alone[0], theirs[: alone[0].shape[0]], atol=1e-5, rtol=0)
    for p, single in zip(diarizer.speaker_probabilities(waves), alone, strict=True):
        torch.testing.assert_close(p, single, atol=1e-5, rtol=0)
    # in pieces of at most 15 s of padded audio (one 15 s step of a batch of one): one piece per speaker-cache step
    pieces = list(diarizer.diarize_steps(waves[:1], max_step_audio_s=15.1))
    assert pieces[:-1] == [None] * (len(pieces) - 1) and len(pieces) - 1 == math.ceil(len(waves[0]) / 16000 / 15.04)
    assert pieces[-1] == diarizer.diarize(waves[:1])


def test_bf16_precision_keeps_the_trained_diarizers_speakers(two_speaker_sortformer_path: Path) -> None:
    """precision=bf16 (the GPU default) runs the encoders under autocast; on the trained model its speaker
    probabilities stay close to float32's and its segments name the same speakers."""
    from tests.support.build_test_models import two_voice_conversation

    model = load_diarization_model(str(two_speaker_sortformer_path), torch.device("cpu"))
    fp32 = SortformerDiarizer(model, torch.device("cpu"), model_name="fp32", precision="fp32")
    bf16 = SortformerDiarizer(model, torch.device("cpu"), model_name="bf16", precision="bf16")
    assert bf16.dtype == torch.bfloat16
    talk = two_voice_conversation(50_999, speech.HELD_OUT_VOICES)
    p32, p16 = fp32.speaker_probabilities([talk.waveform])[0], bf16.speaker_probabilities([talk.waveform])[0]
    assert p16.dtype == torch.float32 and float((p32 - p16).abs().max()) < 0.1
    speakers32, speakers16 = ([s.speaker for s in d.diarize([talk.waveform])[0]] for d in (fp32, bf16))
    assert speakers32 == speakers16


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
    from tests.support.build_test_models import two_voice_conversation

    model = load_diarization_model(str(two_speaker_sortformer_path), torch.device("cpu"))
    diarizer = SortformerDiarizer(model, torch.device("cpu"), model_name="two-speaker")
    talks = [two_voice_conversation(50_777 + i, speech.HELD_OUT_VOICES) for i in range(20)]
    measured, control = der(diarizer, talks), der(diarizer, talks, shuffle=True)
    print(f"held-out DER {measured:.3f}, shuffled {control:.3f}")
    assert measured < DER_BOUND < control
