"""inference.py: the manual pipeline gives NeMo's own `model.transcribe()` text, batches equal singles,
the digits model really transcribes, and loading fails with one clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from inference import ParakeetEngine, build_engine, load_asr_model
from parakeet.core.errors import ModelLoadError
from tests.support import speech

from helpers import ENCODER_BACKENDS, backend_engine, cpu_settings, nemo_reference_texts, offline_hub


@pytest.fixture(scope="module", params=ENCODER_BACKENDS)
def digits_engine(request: pytest.FixtureRequest, digits_engine: ParakeetEngine) -> ParakeetEngine:
    """Each test here on both encoder backends (torch, ONNX Runtime): the same NeMo comparisons hold on either."""
    engine: ParakeetEngine = backend_engine(request, digits_engine)
    return engine


def engine_for(model_path: Path) -> ParakeetEngine:
    return build_engine(cpu_settings(model_path), torch.device("cpu"))


def test_engine_matches_nemo_transcribe_on_digits(
    digits_engine: ParakeetEngine, digits_model_path: Path, digit_utterances: list[Any], tmp_path: Path
) -> None:
    waveforms = [u.waveform for u in digit_utterances]
    reference = nemo_reference_texts(digits_model_path, waveforms, tmp_path)
    ours = [digits_engine.transcribe([w]).transcripts[0].text for w in waveforms]
    assert ours == reference
    assert any(t for t in ours)  # not trivially equal on empty outputs


def test_engine_matches_nemo_transcribe_on_tiny_random_model(tiny_model_path: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    waveforms = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.5, 1.3, 2.0, 3.7)]
    reference = nemo_reference_texts(tiny_model_path, waveforms, tmp_path)
    engine = engine_for(tiny_model_path)
    assert [engine.transcribe([w]).transcripts[0].text for w in waveforms] == reference


def test_engine_padded_batch_equals_single_items(digits_engine: ParakeetEngine, digit_utterances: list[Any]) -> None:
    waveforms = [u.waveform for u in digit_utterances[:12]]
    singles = [digits_engine.transcribe([w]).transcripts[0] for w in waveforms]
    batched = digits_engine.transcribe(waveforms).transcripts
    assert [t.text for t in batched] == [t.text for t in singles]
    assert [t.encoder_frames for t in batched] == [t.encoder_frames for t in singles]


def test_engine_transcribes_real_speech(digits_engine: ParakeetEngine, digit_utterances: list[Any]) -> None:
    hyps = [t.text for t in digits_engine.transcribe([u.waveform for u in digit_utterances]).transcripts]
    refs = [u.text for u in digit_utterances]
    wer = jiwer.wer(refs, hyps)
    print(f"digits model WER over {len(refs)} utterances: {wer:.3%}")
    assert wer <= 0.05, list(zip(refs, hyps, strict=True))


def test_engine_timestamps_only_where_asked_and_text_unchanged(
    digits_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    waves = [u.waveform for u in digit_utterances[:4]]
    every = digits_engine.transcribe(waves)
    some = digits_engine.transcribe(waves, [False, True, False, True])
    assert [t.text for t in some.transcripts] == [t.text for t in every.transcripts]
    for i, (full, partial) in enumerate(zip(every.transcripts, some.transcripts, strict=True)):
        assert full.words and [w.text for w in full.words] == full.text.split()
        if i % 2:
            assert partial.words == full.words and partial.chars == full.chars
        else:
            assert partial.words == partial.segments == partial.chars == ()
    assert set(some.stages_ms) == {"features_encoder", "decoding", "timestamps", "records"}
    with pytest.raises(ValueError, match="3 timestamp and 4 confidence flags for a batch of 4"):
        digits_engine.transcribe(waves, [True] * 3)


def test_engine_is_deterministic_after_nemo_transcribe_left_train_mode(
    digits_torch_engine: ParakeetEngine, digit_utterances: list[Any], tmp_path: Path
) -> None:
    digits_engine = digits_torch_engine  # NeMo's own transcribe() runs the torch encoder (freed under ONNX Runtime)
    """NeMo 3.0.0's transcribe() leaves the modules in train mode; the engine re-asserts eval per batch."""
    w = digit_utterances[0].waveform
    before = digits_engine.transcribe([w]).transcripts[0].text
    sf.write(tmp_path / "x.wav", w, 16000, subtype="FLOAT")
    digits_engine.model.transcribe([str(tmp_path / "x.wav")], verbose=False)
    assert digits_engine.model.encoder.training  # the bug is still there in this NeMo version
    assert [digits_engine.transcribe([w]).transcripts[0].text for _ in range(3)] == [before] * 3


def test_engine_handles_clips_shorter_than_one_encoder_frame(digits_engine: ParakeetEngine) -> None:
    result = digits_engine.transcribe([np.zeros(1, dtype=np.float32), np.full(160, 0.01, dtype=np.float32)])
    assert [t.text for t in result.transcripts] == ["", ""]


def test_engine_bf16_runs_and_keeps_preprocessor_fp32(tiny_model_path: Path) -> None:
    model = load_asr_model(str(tiny_model_path), torch.device("cpu"))
    engine = ParakeetEngine(model, torch.device("cpu"), model_name="tiny", precision="bf16")
    assert next(model.encoder.parameters()).dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in model.preprocessor.buffers() if b.is_floating_point())
    assert isinstance(engine.transcribe([np.zeros(16000, dtype=np.float32)]).transcripts[0].text, str)


def test_load_missing_local_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found: .*missing.nemo"):
        load_asr_model(str(tmp_path / "missing.nemo"), torch.device("cpu"))


def test_load_corrupt_local_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.nemo"
    bad.write_bytes(b"this is not a tar archive")
    with pytest.raises(ModelLoadError, match="could not restore .*corrupt.nemo"):
        load_asr_model(str(bad), torch.device("cpu"))


def test_load_offline_hub_names_model_and_ways_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline_hub(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_asr_model("nvidia/parakeet-tdt-0.6b-v3", torch.device("cpu"))
    msg = str(info.value)
    assert "could not load model 'nvidia/parakeet-tdt-0.6b-v3'" in msg
    assert "not in the local Hugging Face cache" in msg
    assert "PARAKEET_MODEL" in msg and "hf download nvidia/parakeet-tdt-0.6b-v3" in msg


def test_speech_fixture_voices_are_distinct_from_training() -> None:
    assert not set(speech.HELD_OUT_VOICES) & set(speech.TRAIN_VOICES)


def test_engine_confidence_is_in_range_only_where_asked_and_leaves_the_text(
    digits_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    waves = [u.waveform for u in digit_utterances[:6]]
    plain = digits_engine.transcribe(waves)
    scored = digits_engine.transcribe(waves, confidence=[True, False, True, False, True, False])
    assert [t.text for t in scored.transcripts] == [t.text for t in plain.transcripts]
    for i, t in enumerate(scored.transcripts):
        words = [w.confidence for w in t.words]
        tokens = [c.logprob for c in t.chars]
        if i % 2 == 0:
            assert words and all(c is not None and 0.0 <= c <= 1.0 for c in words), words
            assert tokens and all(lp is not None and lp <= 0.0 for lp in tokens), tokens
            assert [w.text for w in t.words] == [w.text for w in plain.transcripts[i].words]
        else:
            assert set(words) == {None} and set(tokens) == {None}


def test_engine_confidence_is_lower_for_the_same_words_in_noise(
    digits_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    rng = np.random.default_rng(4)
    clean, noisy = [], []
    for u in digit_utterances[:8]:
        w = u.waveform
        loud = (w + 0.25 * float(np.abs(w).max()) * rng.standard_normal(len(w))).astype(np.float32)
        a, b = digits_engine.transcribe([w, loud], confidence=[True, True]).transcripts
        clean += [x.confidence for x in a.words]
        noisy += [x.confidence for x in b.words]
    print(f"mean word confidence: clean {np.mean(clean):.3f}, noisy {np.mean(noisy):.3f}")
    assert np.mean(clean) > np.mean(noisy)


def test_load_unreachable_hub_names_model_and_ways_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A hub endpoint on a closed loopback port (nothing leaves this machine) and no local copy."""
    import huggingface_hub.constants as hf_constants

    from helpers import free_port

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 3)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError) as info:
        load_asr_model("nvidia/parakeet-tdt-0.6b-v3", torch.device("cpu"))
    msg = str(info.value)
    assert "could not load model 'nvidia/parakeet-tdt-0.6b-v3'" in msg
    assert "the Hugging Face hub is unreachable" in msg
    assert "PARAKEET_MODEL" in msg and "hf download nvidia/parakeet-tdt-0.6b-v3" in msg
