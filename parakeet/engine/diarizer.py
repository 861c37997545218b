"""Speaker diarization with NeMo's Sortformer (`SortformerEncLabelModel`), batched across requests: its own factory
beside the ASR engine and VAD (`parakeet.engine.factories`), implementing `parakeet.core.engine.Diarizer`."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from parakeet.core.engine import SAMPLE_RATE_HZ, Waveform
from parakeet.core.speakers import SpeakerSegment
from parakeet.engine.device import out_of_memory_as_domain_error, resolve_dtype
from parakeet.engine.features import mel_features
from parakeet.engine.loading import load_diarization_model

log = logging.getLogger("parakeet.engine")


class SortformerDiarizer:
    """Speaker activity with NeMo's Sortformer: NeMo's own modules run by hand on a zero-padded batch (mel
    preprocessor, FastConformer encoder, Transformer encoder, per-speaker sigmoids; the streaming model's
    speaker-cache steps, `forward_streaming_step`, when its config says `streaming_mode`), then NeMo's own
    post-processing per speaker (`ts_vad_post_processing` with `load_postprocessing_from_yaml`'s defaults, times
    rounded to 10 ms, overlapping intervals merged).

    Two things differ from NeMo's `forward` on purpose, so that a file's speakers never depend on its batch-mates
    and a long file's memory stays bounded:
    - an offline model's waveform is scaled by its own peak (NeMo's `process_signal` scales a batch by the batch's
      peak), so each file gets exactly what `model.diarize()` gives it alone (tests/unit/test_diarization.py);
    - a waveform longer than `feature_chunk_s` gets its mel features computed a chunk at a time
      (`parakeet.engine.features.mel_features`): the STFT's intermediates (~0.6 MB per second of audio) never exist
      for the whole file, only the features themselves (n_mels x 100 float32 per second: 51 KB/s for 128 mels).

    Precision: `precision` as for the ASR engine (`resolve_dtype`: auto is bf16 on CUDA, fp32 on CPU), applied with
    `torch.autocast` around the encoders; the preprocessor and post-processing stay float32. Not thread-safe: the
    worker's GPU thread calls it.

    Args:
        model: a restored `SortformerEncLabelModel` on `device` (`load_diarization_model`).
        device: its device.
        model_name: as /health and responses name it.
        precision: "auto", "fp32", "bf16" or "fp16".
        feature_chunk_s: audio per feature chunk, seconds (> 0).
    """

    def __init__(
        self, model: Any, device: torch.device, *, model_name: str, precision: str = "auto",
        feature_chunk_s: float = 60.0,
    ) -> None:  # fmt: skip
        from nemo.collections.asr.parts.mixins.diarization import load_postprocessing_from_yaml

        self.model, self.device, self.model_name = model, device, model_name
        self.model.eval()
        self.dtype = resolve_dtype(precision, device)
        self.max_speakers = int(model.cfg.max_num_of_spks)
        self.streaming = bool(model.cfg.get("streaming_mode", False))
        # An offline Sortformer attends over the whole clip (memory ~ length squared): at most the 90 s sessions it
        # is trained on (NeMo's sortformer configs, `session_len_sec: 90`); the streaming one's speaker cache
        # bounds its memory at any length.
        self.max_audio_s: float | None = None if self.streaming else 90.0
        self.subsampling = int(model.cfg.encoder.subsampling_factor)  # 10 ms feature frames per output frame
        self.postprocessing = load_postprocessing_from_yaml(None)
        self.feature_chunk_samples = max(1, round(feature_chunk_s * SAMPLE_RATE_HZ))

    def diarize(self, waveforms: Sequence[Waveform]) -> list[list[SpeakerSegment]]:
        """Each waveform's speaker segments, sorted by start (then speaker).

        Args:
            waveforms: B >= 1 float32 16 kHz mono waveforms [T_i], T_i >= 1.

        Returns:
            B lists of `SpeakerSegment` (speaker: the model's index, 0 = the first to speak).

        Raises:
            DeviceOutOfMemory: the padded batch does not fit.
        """
        return [self._segments(p) for p in self.speaker_probabilities(waveforms)]

    def diarize_steps(
        self, waveforms: Sequence[Waveform], max_step_audio_s: float | None = None
    ) -> Iterator[list[list[SpeakerSegment]] | None]:
        """`diarize` in pieces, for a caller that runs other device work between them: each `next()` does one piece
        and yields None, the last yields the segments. An offline model is one piece; the streaming model's
        speaker-cache steps go at most `max_step_audio_s` of padded audio (batch size x 15 s per step for NVIDIA's
        v2) to a piece, so a long file never holds the device for more than one offline batch's worth.

        Raises:
            DeviceOutOfMemory: from the piece that did not fit.
        """
        for probabilities in self._probability_steps(waveforms, max_step_audio_s):
            yield None if probabilities is None else [self._segments(p) for p in probabilities]

    def warmup(self, duration_s: float = 2.0) -> float:
        """Diarize one file of seeded noise so that the first request does not pay for lazy init. Returns ms."""
        noise = (0.01 * np.random.default_rng(0).standard_normal(int(duration_s * SAMPLE_RATE_HZ))).astype(np.float32)
        t0 = time.perf_counter()
        self.diarize([noise])
        return (time.perf_counter() - t0) * 1000

    def speaker_probabilities(self, waveforms: Sequence[Waveform]) -> list[torch.Tensor]:
        """Each waveform's per-frame speaker activity: B float32 CPU tensors [T_out_i, S], one row per 80 ms encoder
        frame, S = `max_speakers`; a waveform's rows equal those it gets alone to float rounding (~1e-5).

        Raises:
            DeviceOutOfMemory: the padded batch does not fit.
        """
        return [p for p in self._probability_steps(waveforms, None) if p is not None][0]

    @contextlib.contextmanager
    def _device_work(self, batch_size: int) -> Iterator[None]:
        """One piece of device work: inference mode, the precision's autocast, out-of-memory as DeviceOutOfMemory
        (entered and left per piece: nothing of it stays on the GPU thread between pieces)."""
        oom = f"the diarization batch of {batch_size} does not fit"
        autocast = torch.autocast(self.device.type, self.dtype, self.dtype != torch.float32)
        with out_of_memory_as_domain_error(self.device, oom), torch.inference_mode(), autocast:
            yield

    def _probability_steps(
        self, waveforms: Sequence[Waveform], max_step_audio_s: float | None
    ) -> Iterator[list[torch.Tensor] | None]:
        """The work of `speaker_probabilities` in pieces (see `diarize_steps`): None after each, then the result."""
        featurizer, b = self.model.preprocessor.featurizer, len(waveforms)
        n = [int(featurizer.get_seq_len(torch.tensor([len(w)]))) for w in waveforms]  # feature frames
        with self._device_work(b):
            feats = torch.full((b, int(featurizer.nfilt), max(n)), float(featurizer.pad_value), device=self.device)
            for i, w in enumerate(waveforms):  # each file's features written in place: they exist once
                self._features(w, feats[i, :, : n[i]])
            lengths = torch.tensor(n, device=self.device)
            if not self.streaming:
                emb, emb_lengths = self.model.frontend_encoder(processed_signal=feats, processed_signal_length=lengths)
                preds = self.model.forward_infer(emb, emb_lengths)
        if self.streaming:
            steps = self._streaming_steps(feats, lengths, max_step_audio_s)
            while (preds := next(steps)) is None:
                yield None
        cpu = preds.float().cpu()  # [B, T_out, S]
        frames = [min(cpu.shape[1], math.ceil(k / self.subsampling)) for k in n]
        yield [p[:k] for p, k in zip(cpu, frames, strict=True)]

    def _streaming_steps(
        self, feats: torch.Tensor, lengths: torch.Tensor, max_step_audio_s: float | None
    ) -> Iterator[torch.Tensor | None]:
        """NeMo's `forward_streaming` by hand (its speaker-cache steps, without its progress bar): None after each
        piece of at most `max_step_audio_s` of padded audio, then the predictions [B, T_out, S]."""
        m, b = self.model, feats.shape[0]
        hop = float(m.preprocessor.featurizer.hop_length)
        chunk_s = m.sortformer_modules.chunk_len * self.subsampling * hop / SAMPLE_RATE_HZ
        per_piece = max(1, int(max_step_audio_s // (chunk_s * b))) if max_step_audio_s else None
        with self._device_work(b):
            state = m.sortformer_modules.init_streaming_state(b, m.async_streaming, self.device)
            preds = torch.zeros((b, 0, m.sortformer_modules.n_spk), device=self.device)
            chunks = m.sortformer_modules.streaming_feat_loader(feats, lengths, torch.zeros_like(lengths))
        for k, (_, chunk, chunk_lengths, left, right) in enumerate(chunks, 1):
            with self._device_work(b):
                state, preds = m.forward_streaming_step(
                    processed_signal=chunk, processed_signal_length=chunk_lengths, streaming_state=state,
                    total_preds=preds, left_offset=left, right_offset=right,
                )  # fmt: skip
            if per_piece is not None and k % per_piece == 0:
                yield None
        yield preds

    def _features(self, waveform: Waveform, out: torch.Tensor) -> None:
        """One waveform's mel features into `out` [n_mels, T_feat], float32, on the device (the class docstring)."""
        x = torch.from_numpy(np.asarray(waveform, dtype=np.float32)).to(self.device)
        if not self.streaming:  # NeMo's process_signal: x / (max + eps), here per file
            x = (1 / (x.max() + self.model.eps)) * x
        mel_features(self.model.preprocessor, x, self.feature_chunk_samples, out)

    def _segments(self, preds: torch.Tensor) -> list[SpeakerSegment]:
        """NeMo's post-processing of one file's speaker probabilities [T_out, S]."""
        from nemo.collections.asr.parts.utils.speaker_utils import merge_float_intervals
        from nemo.collections.asr.parts.utils.vad_utils import ts_vad_post_processing

        segments = []
        for speaker in range(preds.shape[-1]):
            spans = ts_vad_post_processing(
                preds[:, speaker], self.postprocessing, unit_10ms_frame_count=self.subsampling
            )
            rounded = [[round(float(a), 2), round(float(b), 2)] for a, b in spans.tolist()]
            merged = merge_float_intervals(rounded)  # (float32 inside: rounded again)
            segments += [SpeakerSegment(round(float(a), 3), round(float(b), 3), speaker) for a, b in merged]
        return sorted(segments, key=lambda s: (s.start_s, s.speaker))


def build_diarizer(name_or_path: str, device: torch.device, precision: str = "auto") -> SortformerDiarizer:
    """Load the diarizer `name_or_path` names onto `device`, to run in `precision` (as the ASR model).

    Raises:
        ModelLoadError: it could not be loaded (`load_diarization_model`).
    """
    t0 = time.perf_counter()
    model = load_diarization_model(name_or_path, device)
    diarizer = SortformerDiarizer(model, device, model_name=name_or_path, precision=precision)
    log.info("loaded diarizer %s on %s (%s, up to %d speakers) in %.1f s", name_or_path, device, diarizer.dtype,
             diarizer.max_speakers, time.perf_counter() - t0)  # fmt: skip
    return diarizer
