"""`ParakeetEngine`: a loaded NeMo Parakeet-TDT model on one device, serving offline batches and streaming steps.

preprocessor (log-mel features) -> the encoder seam (`parakeet.engine.encoder`) -> TDT greedy batched decoding,
in eval mode under `torch.inference_mode()` (docs/nemo.md). It never calls `model.transcribe()` (not thread-safe,
and it leaves the model in train mode: NeMo 3.0.0 bug). Implements `parakeet.core.engine.Engine`. No HTTP, no
asyncio: the worker runs it on one dedicated thread per device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from parakeet.core.engine import SAMPLE_RATE_HZ, DeviceInfo, StepBatchResult, StepRequest, StepResult
from parakeet.core.errors import ModelLoadError
from parakeet.core.keywords import KeyPhrases
from parakeet.core.timestamps import HypothesisTimestamps
from parakeet.core.transcripts import BatchResult, Transcript
from parakeet.engine.decoding import Decodings, serving_decoding_cfg
from parakeet.engine.device import device_info, out_of_memory_as_domain_error, resolve_dtype
from parakeet.engine.encoder import Encoder, TorchEncoder, encode_waveforms
from parakeet.engine.hypotheses import (
    NO_TIMESTAMPS,
    hypothesis_timestamps,
    token_scores,
    token_table,
    with_confidence,
)
from parakeet.engine.streaming import decode_group, decode_stream_step


class ParakeetEngine:
    """A loaded model on one device, running the manual pipeline on zero-padded batches.

    Not thread-safe: call `transcribe` and `stream_step` from one thread at a time (the server has one GPU thread
    per worker); `unspellable` is the exception.

    Args:
        model: a NeMo TDT/RNNT model (`EncDecRNNTModel` subclass) already on `device`.
        device: its device.
        model_name: name reported in responses and /health.
        precision: "auto", "fp32", "bf16" or "fp16" for encoder, decoder and joint (the preprocessor stays fp32:
            its STFT and log-mel need the range).
        cuda_graphs: NeMo's CUDA-graph label-looping decoder (`greedy.use_cuda_graph_decoder`; CUDA only).
            `build_engine` decides it from `PARAKEET_CUDA_GRAPHS` (`parakeet.engine.cuda_graphs`).
        max_symbols_per_step: `greedy.max_symbols`, the most tokens emitted per encoder frame.
        encoder: the encoder seam; None: the model's own torch encoder in `precision`.

    Raises:
        ModelLoadError: the model expects another sample rate than 16 kHz.
    """

    def __init__(
        self, model: Any, device: torch.device, *, model_name: str, precision: str = "auto",
        cuda_graphs: bool = False, max_symbols_per_step: int = 10, encoder: Encoder | None = None,
    ) -> None:  # fmt: skip
        self.model, self.device, self.model_name = model, device, model_name
        self.dtype = resolve_dtype(precision, device)
        self.sample_rate_hz = int(model.cfg.get("sample_rate", SAMPLE_RATE_HZ))
        if self.sample_rate_hz != SAMPLE_RATE_HZ:
            raise ModelLoadError(f"model expects {self.sample_rate_hz} Hz audio; this server feeds {SAMPLE_RATE_HZ} Hz")
        cfg = serving_decoding_cfg(model.cfg.decoding, max_symbols_per_step)
        self.decodings = Decodings(model, cfg, use_triton=device.type == "cuda")
        self.cuda_graphs = False
        self.cuda_graphs_reason = "not a CUDA device" if device.type != "cuda" else "off (as constructed)"
        self.set_cuda_graphs(cuda_graphs)
        model.eval()
        for module in (model.encoder, model.decoder, model.joint):
            module.to(dtype=self.dtype)
        model.preprocessor.to(dtype=torch.float32)
        self.encoder: Encoder = encoder or TorchEncoder(model.encoder, self.dtype)
        self.encoder_reason = "torch: as constructed"
        # Window stride (s) x subsampling: 0.01 x 8 = 0.08 s per encoder frame for Parakeet.
        self.window_stride_s = float(model.cfg.preprocessor.window_stride)
        self.subsampling_factor = int(model.cfg.encoder.get("subsampling_factor", 8))
        hop_samples = round(self.window_stride_s * self.sample_rate_hz)
        self.encoder_frame_samples = hop_samples * self.subsampling_factor  # Parakeet: 160 x 8 = 1280 (80 ms)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.token_table = token_table(model.decoding, self.window_stride_s, self.subsampling_factor)
        # "parakeet": parakeet.core.timestamps (the default where the decoding allows it); "nemo": NeMo's own
        # compute_rnnt_timestamps + process_timestamp_outputs (the reference, and the fallback).
        self.timestamps_impl = "parakeet" if self.token_table is not None else "nemo"
        self.sync_stages = False  # benchmarks: synchronise after the encoder so stages_ms splits true device time

    def use_encoder(self, encoder: Encoder, reason: str) -> None:
        """Serve with `encoder` from now on (call from the GPU thread, between batches) and free the torch
        encoder's weights: the process holds one copy of the encoder (NeMo's `model.encoder` keeps its structure
        on the meta device; nothing of the engine runs it again)."""
        self.encoder, self.encoder_reason = encoder, reason
        self.model.encoder.to("meta")

    def set_cuda_graphs(self, on: bool) -> None:
        """Rebuild the decoding with or without NeMo's CUDA-graph decoder (on a CPU it stays off). Call it from the
        GPU thread, between batches."""
        self.cuda_graphs = bool(on and self.device.type == "cuda")
        self.decodings.configure(self.cuda_graphs)

    def transcribe(
        self,
        waveforms: Sequence[npt.NDArray[np.float32]],
        timestamps: Sequence[bool] | None = None,
        confidence: Sequence[bool] | None = None,
        keywords: Sequence[KeyPhrases | None] | None = None,
    ) -> BatchResult:
        """Transcribe a batch of waveforms in one padded forward pass.

        Args:
            waveforms: float32 mono 16 kHz arrays, each of shape [T_i], T_i >= 1.
            timestamps: per waveform, whether to compute its word/segment/char timestamps (None: for all).
                They cost Python time on this thread (`parakeet.core.timestamps`, ~0.3 ms per 15 s item; NeMo's
                own code where the decoding needs it) and never change the text.
            confidence: per waveform, whether to keep word and token confidence (implies timestamps).
            keywords: per waveform, the key phrases to boost (None: none); see `decode_encoded`.

        Returns:
            One transcript per waveform, in input order, the batch's compute time, and `stages_ms`: host
            time in features + encoder, greedy decoding, timestamps, and building the records (with
            `sync_stages`, the device is synchronised after the encoder so that the split is true on a GPU).

        Raises:
            ValueError: empty batch, an empty waveform, or flags of another length.
            DeviceOutOfMemory: the padded batch does not fit on the device (the cache is emptied first, so
                the caller can split the batch and retry).
        """
        n = len(waveforms)
        want = [True] * n if timestamps is None else list(timestamps)
        conf = [False] * n if confidence is None else list(confidence)
        if len(want) != n or len(conf) != n:
            raise ValueError(f"{len(want)} timestamp and {len(conf)} confidence flags for a batch of {n}")
        if keywords is not None and len(keywords) != n:
            raise ValueError(f"{len(keywords)} keyword lists for a batch of {n}")
        padded_s = max((len(w) for w in waveforms), default=0) * n / SAMPLE_RATE_HZ
        oom = f"out of device memory on a batch of {n} ({padded_s:.0f} s padded)"
        with out_of_memory_as_domain_error(self.device, oom), torch.inference_mode():
            t0 = time.perf_counter()
            enc, enc_lens = self.encode(waveforms)
            if self.sync_stages and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t_enc = time.perf_counter()
            transcripts, stages_ms = self.decode_encoded(enc, enc_lens, want, conf, keywords)
        t_end = time.perf_counter()
        stages_ms["features_encoder"] = (t_enc - t0) * 1000
        return BatchResult(transcripts, (t_end - t0) * 1000.0, stages_ms)

    def encode(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms to encoder frames [B, D, T_enc] and their lengths [B] (`encode_waveforms` through this engine's
        encoder), in eval mode (NeMo's `transcribe()` leaves the modules in train mode: re-asserted every call).

        Raises:
            ValueError: an empty batch or an empty waveform.
        """
        self.model.eval()
        return encode_waveforms(self.model.preprocessor, self.encoder, waveforms, self.device)

    @torch.inference_mode()
    def decode_encoded(
        self,
        enc: torch.Tensor,
        enc_lens: torch.Tensor,
        timestamps: Sequence[bool],
        confidence: Sequence[bool] | None = None,
        keywords: Sequence[KeyPhrases | None] | None = None,
    ) -> tuple[list[Transcript], dict[str, float]]:
        """TDT greedy decoding of encoder output, timestamps where asked for, and the transcript records.

        Args:
            enc: encoder output, [B, D, T_enc] in the engine's dtype, on its device.
            enc_lens: valid encoder frames per item, [B] int64.
            timestamps: B flags (see `transcribe`).
            confidence: B flags (see `transcribe`); a batch with any runs the confidence-keeping decoder.
            keywords: B phrase lists or None: each item's list is boosted in NeMo's per-stream phrase boosting
                (a boosting tree per list, compiled once and kept for the next requests with the same list);
                items without one decode exactly as without boosting, in the same batch.

        Returns:
            The transcripts and host ms spent in "decoding", "timestamps" and "records" (the GPU thread's
            Python time after the encoder; on a GPU the device is synchronised at the end of "records").
        """
        t0 = time.perf_counter()
        conf = list(confidence) if confidence is not None else [False] * len(timestamps)
        timestamps = [w or c for w, c in zip(timestamps, conf, strict=True)]  # confidence sits on words and chars
        # What `rnnt_decoder_predictions_tensor(..., return_hypotheses=True)` does for greedy decoding
        # (nemo/collections/asr/parts/submodules/rnnt_decoding.py), with timestamps only where asked for.
        boosting = keywords is not None and any(keywords)
        decoding = self.decodings.for_batch(any(conf), boosting)
        partial = self.decodings.partial_hypotheses(decoding, keywords) if keywords is not None and boosting else None
        raw = decoding.decoding(encoder_output=enc, encoded_lengths=enc_lens, partial_hypotheses=partial)[0]
        hyps = decoding.decode_hypothesis(raw)
        t_dec = time.perf_counter()
        spans = [self.timestamps_of(decoding, h) if w else NO_TIMESTAMPS for h, w in zip(hyps, timestamps, strict=True)]
        if any(conf):  # after timestamps, as NeMo orders it: word confidence follows the decoded words
            decoding.compute_confidence([h for h, c in zip(hyps, conf, strict=True) if c])
        t_ts = time.perf_counter()
        transcripts = [
            self._record(h, n, ts, c) for h, n, ts, c in zip(hyps, enc_lens.tolist(), spans, conf, strict=True)
        ]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_end = time.perf_counter()
        stages = {
            "decoding": (t_dec - t0) * 1000,
            "timestamps": (t_ts - t_dec) * 1000,
            "records": (t_end - t_ts) * 1000,
        }
        return transcripts, stages

    def _record(self, hyp: Any, frames: int, ts: HypothesisTimestamps, confidence: bool) -> Transcript:
        classes = int(self.model.joint.num_classes_with_blank)
        return Transcript(
            text=hyp.text if isinstance(hyp.text, str) else "",
            num_tokens=len(hyp.y_sequence) if hyp.y_sequence is not None else 0,
            encoder_frames=int(frames),
            words=with_confidence(ts.words, hyp.word_confidence) if confidence else ts.words,
            segments=ts.segments,
            chars=token_scores(hyp, ts.chars, self.model.tokenizer, classes) if confidence else ts.chars,
        )

    def timestamps_of(self, decoding: Any, hyp: Any) -> HypothesisTimestamps:
        """One hypothesis' timestamps by `timestamps_impl` ("parakeet" or NeMo's own code: `hypothesis_timestamps`)."""
        table = self.token_table if self.timestamps_impl == "parakeet" else None
        return hypothesis_timestamps(decoding, hyp, table, self.window_stride_s, self.subsampling_factor)

    def stream_step(self, requests: Sequence[StepRequest]) -> StepBatchResult:
        """One step of buffered chunked streaming for B streams at once (NeMo's `BufferedRNNTPipeline` pattern:
        docs/streaming.md): every window [left | chunk | right] goes through the preprocessor and the encoder seam
        in one padded batch, then `parakeet.engine.streaming.decode_stream_step` decodes each stream's chunk from
        its carried decoder state and its right context speculatively.

        Returns:
            Per stream: all committed tokens, their text, the partial text, the new state, the frames committed.

        Raises:
            ValueError: an empty batch or window, or a window too short for its `left_frames + commit_frames`.
            DeviceOutOfMemory: the padded step does not fit on the device.
        """
        if not requests:
            raise ValueError("empty step")
        oom = f"out of device memory on a streaming step of {len(requests)}"
        with out_of_memory_as_domain_error(self.device, oom), torch.inference_mode():
            t0 = time.perf_counter()
            enc, enc_lens = self.encode([r.window for r in requests])  # per-window normalisation
            results = decode_stream_step(self.decodings, enc.transpose(1, 2), enc_lens, requests)  # frames [B, T, D]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return StepBatchResult(results, (time.perf_counter() - t0) * 1000.0)

    def decode_step(
        self, frames: torch.Tensor, lengths: torch.Tensor, requests: Sequence[StepRequest]
    ) -> list[StepResult]:
        """The decoding half of `stream_step` for plain streams (no key phrases), from encoder frames [B, T, D]:
        `parakeet.engine.streaming.decode_group` (the CUDA-graph self-check's probe calls it)."""
        return decode_group(self.decodings, frames, lengths, requests)

    def unspellable(self, text: str) -> str:
        """See `Decodings.unspellable` (thread-safe)."""
        return self.decodings.unspellable(text)

    def warmup(self, duration_s: float = 2.0) -> float:
        """Run one batch of seeded noise so that first requests don't pay for lazy init. Returns ms."""
        rng = np.random.default_rng(0)
        noise = (0.01 * rng.standard_normal(int(duration_s * SAMPLE_RATE_HZ))).astype(np.float32)
        return self.transcribe([noise]).compute_ms

    def device_info(self) -> DeviceInfo:
        """The device and the decoder's CUDA graphs for /health (`parakeet.engine.device.device_info`)."""
        info = device_info(self.device, self.cuda_graphs, self.cuda_graphs_reason)
        return replace(info, encoder_backend=self.encoder.backend, encoder_reason=self.encoder_reason)
