"""The streaming primitives with real NeMo, no server: the engine's batched stream step, the Silero VAD wrapper,
the VAD segmenter, the G.711 tables. Oracles: the offline engine, single-stream steps, the silero-vad package's
own model and VADIterator, CPython's audioop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from inference import ParakeetEngine, SileroVad
from parakeet.core.engine import StepRequest
from parakeet.pipeline.vad import VAD_FRAME_SAMPLES, VadParams, VadSegmenter
from tests.support import speech

from helpers import ENCODER_BACKENDS, backend_engine

CHUNK, RIGHT, LEFT = 6, 6, 50  # the balanced preset in encoder frames (80 ms each)


def stream_plan(n_samples: int, frame: int, chunk: int = CHUNK, right: int = RIGHT, left: int = LEFT) -> list[Any]:
    """The windows the scheduler would cut for a stream of `n_samples` that has fully arrived, one chunk per step,
    then the final step: (first_frame, stop_frame | None, commit | None)."""
    plan, k = [], 0
    while (k + chunk + right) * frame <= n_samples:
        first = max(0, k - left)
        plan.append((first, k + chunk + right, chunk))
        k += chunk
    plan.append((max(0, k - left), None, None))
    return plan


@pytest.fixture(scope="module", params=ENCODER_BACKENDS)
def digits_engine(request: pytest.FixtureRequest, digits_engine: ParakeetEngine) -> ParakeetEngine:
    """The stream-step tests on both encoder backends: a step's windows go through the engine's encoder seam."""
    engine: ParakeetEngine = backend_engine(request, digits_engine)
    return engine


def run_stream(
    engine: ParakeetEngine, w: np.ndarray, chunk: int = CHUNK
) -> tuple[str, list[str], list[tuple[int, ...]]]:
    """One stream stepped alone: (final committed text, partial texts, committed tokens after each step)."""
    frame = engine.encoder_frame_samples
    state, tokens, k = None, (), 0
    partials, history = [], []
    for first, stop, commit in stream_plan(len(w), frame, chunk):
        window = w[first * frame : stop * frame if stop is not None else len(w)]
        r = engine.stream_step([StepRequest(window, k - first, commit, state, tokens)]).results[0]
        state, tokens, k = r.state, r.tokens, k + r.committed_frames
        partials.append(r.text)
        history.append(tokens)
    return (engine.model.tokenizer.ids_to_text(list(tokens)) if tokens else ""), partials, history


def test_chunked_decoding_of_offline_encoder_output_equals_offline_text(
    digits_torch_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    digits_engine = digits_torch_engine  # (runs NeMo's torch encoder module itself)
    """NeMo's label-looping decoder with carried state (what stream_step relies on) is exact on the same frames."""
    model = digits_engine.model
    computer = model.decoding.decoding.decoding_computer
    for u in digit_utterances[:12]:
        offline = digits_engine.transcribe([u.waveform]).transcripts[0].text
        with torch.inference_mode():
            x = torch.from_numpy(u.waveform)[None]
            feats, flen = model.preprocessor(input_signal=x, length=torch.tensor([x.shape[1]]))
            enc, elen = model.encoder(audio_signal=feats, length=flen)
            enc = enc.transpose(1, 2)
            state, ids = None, []
            for start in range(0, int(elen[0]), 3):
                n = min(3, int(elen[0]) - start)
                hyps, batched = computer(
                    x=enc[:, start : start + 3], out_len=torch.tensor([n]), prev_batched_state=state
                )
                state = batched
                ids += hyps.transcript[0, : hyps.current_lengths[0]].tolist()
        assert model.tokenizer.ids_to_text(ids) == offline, u.text
        assert offline


def test_streamed_utterance_converges_to_offline_text(
    digits_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    """Partials grow into the utterance's text (the server's *final* is the offline pass itself, asserted end to
    end elsewhere; this checks the partial path on whole utterances at the default preset)."""
    same = 0
    for u in digit_utterances:
        final, partials, _ = run_stream(digits_engine, u.waveform)
        same += final == digits_engine.transcribe([u.waveform]).transcripts[0].text
        assert partials[-1] == final
    print(f"streamed committed text == offline text for {same}/{len(digit_utterances)} utterances")
    assert same >= len(digit_utterances) - 2


def test_batched_step_equals_single_stream_steps(digits_engine: ParakeetEngine, digit_utterances: list[Any]) -> None:
    """Streams of different lengths, joining at different steps (state None mid-batch), windows shorter than
    chunk + right context, a 10 ms stream and final steps mixed with ordinary ones: one batch == each alone."""
    frame = digits_engine.encoder_frame_samples
    waves = [u.waveform for u in digit_utterances[:6]] + [digit_utterances[6].waveform[:160]]
    singles = [run_stream(digits_engine, w)[2] for w in waves]
    plans = [stream_plan(len(w), frame) for w in waves]
    offsets = [0, 0, 1, 1, 2, 0, 1]  # stream i joins at batch step offsets[i]
    states: list[Any] = [None] * len(waves)
    tokens: list[tuple[int, ...]] = [()] * len(waves)
    frames = [0] * len(waves)
    got: list[list[tuple[int, ...]]] = [[] for _ in waves]
    sizes = []
    for t in range(max(o + len(p) for o, p in zip(offsets, plans, strict=True))):
        live = [i for i in range(len(waves)) if 0 <= t - offsets[i] < len(plans[i])]
        reqs = []
        for i in live:
            first, stop, commit = plans[i][t - offsets[i]]
            window = waves[i][first * frame : stop * frame if stop is not None else len(waves[i])]
            reqs.append(StepRequest(window, frames[i] - first, commit, states[i], tokens[i]))
        sizes.append(len(reqs))
        for i, r in zip(live, digits_engine.stream_step(reqs).results, strict=True):
            states[i], tokens[i], frames[i] = r.state, r.tokens, frames[i] + r.committed_frames
            got[i].append(r.tokens)
    assert max(sizes) >= 5, sizes
    assert got == singles


def test_hypotheses_are_cut_to_the_real_batch() -> None:
    """With CUDA graphs NeMo's label-looping computer returns hypotheses (and states) for its allocated batch,
    larger than the step's; only the first B rows are the step's streams (seen on an H100: without the cut a
    step of 8 streams after a larger one failed). NeMo's BatchedHyps shape, read without a GPU."""
    from nemo.collections.asr.parts.utils.rnnt_utils import BatchedHyps

    from parakeet.engine.hypotheses import hyp_ids

    hyps = BatchedHyps(batch_size=4, init_length=3, device=torch.device("cpu"), blank_id=0)
    hyps.transcript[:, :2] = torch.tensor([[5, 6], [7, 8], [9, 10], [11, 12]])
    hyps.current_lengths[:] = torch.tensor([2, 1, 2, 0])
    assert hyp_ids(hyps, 2) == [[5, 6], [7]]
    assert hyp_ids(hyps, 4) == [[5, 6], [7], [9, 10], []]


def test_stream_step_rejects_a_window_too_short_for_its_commit(digits_engine: ParakeetEngine) -> None:
    with pytest.raises(ValueError, match="frames"):
        digits_engine.stream_step([StepRequest(np.zeros(1280 * 3, np.float32), 0, 10, None)])
    with pytest.raises(ValueError, match="empty"):
        digits_engine.stream_step([])


def _silero_reference() -> Any:
    import silero_vad

    return silero_vad.load_silero_vad(onnx=False)


def test_silero_wrapper_equals_the_packaged_model_batched() -> None:
    """Our stateless batched call gives the packaged stateful model's probabilities, stream by stream."""
    threads = torch.get_num_threads()
    vad = SileroVad()
    assert torch.get_num_threads() == threads  # importing silero_vad set it to 1; the wrapper restores it
    streams = [speech.speak("four two seven"), speech.speak("one nine", voice="en-gb"), np.zeros(16000, np.float32)]
    n = min(len(s) for s in streams) // VAD_FRAME_SAMPLES
    states: list[Any] = [None] * len(streams)
    ours: list[list[float]] = [[] for _ in streams]
    for j in range(n):
        frames = [s[j * VAD_FRAME_SAMPLES : (j + 1) * VAD_FRAME_SAMPLES] for s in streams]
        probs, states = vad.speech_probs(frames, states)
        for i, p in enumerate(probs):
            ours[i].append(p)
    for i, s in enumerate(streams):
        model = _silero_reference()
        with torch.inference_mode():
            ref = [float(model(torch.from_numpy(s[j * 512 : (j + 1) * 512]), 16000)) for j in range(n)]
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)
    assert max(ours[0]) > 0.5 > max(ours[2])


def test_segmenter_matches_silero_vad_iterator() -> None:
    """Our segmenter on our probabilities finds the boundaries of silero's own VADIterator."""
    from silero_vad import VADIterator

    pause = np.zeros(int(0.9 * 16000), np.float32)
    w = np.concatenate([pause[:8000], speech.speak("four two seven"), pause, speech.speak("one nine"), pause])
    params = VadParams(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    iterator = VADIterator(
        _silero_reference(), threshold=0.5, sampling_rate=16000, min_silence_duration_ms=500, speech_pad_ms=300
    )
    vad, seg = SileroVad(), VadSegmenter(params)
    ours, theirs = [], []
    for j in range(len(w) // 512):
        frame = w[j * 512 : (j + 1) * 512]
        (prob,), (seg.model_state,) = vad.speech_probs([frame], [seg.model_state])
        boundary = seg.feed(prob)
        if boundary is not None:
            ours.append(("start" if boundary.is_start else "end", boundary.sample))
        event = iterator(torch.from_numpy(frame))
        if event:
            ((key, value),) = event.items()
            theirs.append((key, int(value)))
    assert [k for k, _ in ours] == ["start", "end", "start", "end"]
    assert ours == theirs


def test_a_streams_text_is_the_same_on_both_encoder_backends(
    digits_torch_engine: ParakeetEngine, digits_onnx_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    """Stream steps run their windows through the encoder seam: on ONNX Runtime a stream commits the same tokens
    step by step, with the same partials and final, as on torch."""
    assert digits_onnx_engine.encoder.backend == "onnxruntime"
    for u in digit_utterances[:6]:
        assert run_stream(digits_onnx_engine, u.waveform) == run_stream(digits_torch_engine, u.waveform)
