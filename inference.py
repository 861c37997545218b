"""The model layer: load a NeMo Parakeet-TDT model and run the manual batched pipeline on one device.

preprocessor (log-mel features) -> FastConformer encoder -> TDT greedy batched decoding, in eval mode under
`torch.inference_mode()` (docs/nemo.md). It never calls `model.transcribe()` (not thread-safe, and it leaves
the model in train mode: NeMo 3.0.0 bug). Implements `parakeet.core.engine.Engine`; imports nothing of the
project but `parakeet.core`. No HTTP, no asyncio: callers run `ParakeetEngine.transcribe` on one dedicated
thread per device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

from parakeet.core.engine import (
    CPU_DEVICE,
    SAMPLE_RATE_HZ,
    DeviceInfo,
    Diarizer,
    StepBatchResult,
    StepRequest,
    StepResult,
    Waveform,
)
from parakeet.core.errors import DeviceOutOfMemory, ModelLoadError
from parakeet.core.keywords import KeyPhrases
from parakeet.core.logs import configure_logging
from parakeet.core.settings import Settings
from parakeet.core.speakers import SpeakerSegment
from parakeet.core.timestamps import HypothesisTimestamps, TokenTable, tdt_timestamps
from parakeet.core.transcripts import BatchResult, TimedSpan, Transcript
from parakeet.core.tuning import Tuning

log = logging.getLogger("parakeet.inference")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_asr_model(name_or_path: str, device: torch.device) -> Any:
    """Load a NeMo ASR model from a local .nemo file or from the Hugging Face hub (or its local cache).

    Args:
        name_or_path: a path to a .nemo file, or a hub id such as "nvidia/parakeet-tdt-0.6b-v3".
        device: where to map the weights.

    Returns:
        The NeMo model (an `EncDecRNNTBPEModel` for Parakeet-TDT).

    Raises:
        ModelLoadError: with one message naming the model and the ways out (missing file, offline or
            unreachable hub without a cached copy, unknown repository, corrupt checkpoint).
    """
    from nemo.collections.asr.models import ASRModel

    return _load_nemo(ASRModel, name_or_path, device, "PARAKEET_MODEL")


def load_diarization_model(name_or_path: str, device: torch.device) -> Any:
    """Load NeMo's Sortformer diarizer (`SortformerEncLabelModel`) from a local .nemo file or the Hugging Face hub,
    e.g. "nvidia/diar_streaming_sortformer_4spk-v2" (CC-BY-4.0).

    Raises:
        ModelLoadError: as `load_asr_model`, naming PARAKEET_DIARIZATION_MODEL.
    """
    from nemo.collections.asr.models import SortformerEncLabelModel

    return _load_nemo(SortformerEncLabelModel, name_or_path, device, "PARAKEET_DIARIZATION_MODEL")


def _load_nemo(cls: Any, name_or_path: str, device: torch.device, setting: str) -> Any:
    if name_or_path.endswith(".nemo") or Path(name_or_path).exists():
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path} ({setting} names a .nemo file that is not there)")
        try:
            return cls.restore_from(str(path), map_location=device)
        except Exception as exc:
            raise ModelLoadError(f"could not restore {path}: {type(exc).__name__}: {exc}") from exc
    try:
        return cls.from_pretrained(name_or_path, map_location=device)
    except Exception as exc:
        raise ModelLoadError(_hub_failure_message(name_or_path, exc, setting)) from exc


def _hub_failure_message(model: str, exc: BaseException, setting: str = "PARAKEET_MODEL") -> str:
    kind = type(exc).__name__
    chain: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 5:
        chain.append(type(e).__name__)
        e = e.__cause__ or e.__context__
    names = " ".join(chain)
    if "OfflineMode" in names or "LocalEntryNotFound" in names:
        why = "the hub is disabled (HF_HUB_OFFLINE=1) and the model is not in the local Hugging Face cache"
    elif any(k in names for k in ("Connect", "Timeout", "Network", "ProxyError", "SSLError")):
        why = "the Hugging Face hub is unreachable and the model is not in the local cache"
    elif "RepositoryNotFound" in names or "RevisionNotFound" in names or "EntryNotFound" in names:
        why = "the hub has no such model"
    else:
        why = f"{kind}: {str(exc).splitlines()[0][:300] if str(exc) else 'no detail'}"
    return (
        f"could not load model '{model}': {why}. Ways out: set {setting} to a local .nemo file "
        f"(e.g. {setting}=/models/{model.rsplit('/', 1)[-1]}.nemo), or pre-fill the Hugging Face cache on a "
        f"machine with internet (`hf download {model}`) and copy it here (HF_HOME, default ~/.cache/huggingface)"
    )


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Map the `precision` setting to a dtype: auto -> bf16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


class ParakeetEngine:
    """A loaded model on one device, running the manual pipeline on zero-padded batches.

    Not thread-safe: call `transcribe` from one thread at a time (the server has one GPU thread per worker).
    """

    def __init__(
        self,
        model: Any,
        device: torch.device,
        *,
        model_name: str,
        precision: str = "auto",
        cuda_graphs: bool = False,
        max_symbols_per_step: int = 10,
    ) -> None:
        """Configure `model` for serving.

        Args:
            model: a NeMo TDT/RNNT model (`EncDecRNNTModel` subclass) already on `device`.
            device: its device.
            model_name: name reported in responses and /health.
            precision: "auto", "fp32", "bf16" or "fp16" for encoder, decoder and joint (the preprocessor
                stays fp32: its STFT and log-mel need the range).
            cuda_graphs: NeMo's CUDA-graph label-looping decoder (`greedy.use_cuda_graph_decoder`; CUDA only).
                `build_engine` decides it from `PARAKEET_CUDA_GRAPHS` (see `choose_cuda_graphs`).
            max_symbols_per_step: `greedy.max_symbols`, the most tokens emitted per encoder frame.
        """
        from omegaconf import OmegaConf, open_dict

        self.model = model
        self.device = device
        self.model_name = model_name
        self.dtype = resolve_dtype(precision, device)
        self.sample_rate_hz = int(model.cfg.get("sample_rate", SAMPLE_RATE_HZ))
        if self.sample_rate_hz != SAMPLE_RATE_HZ:
            raise ModelLoadError(f"model expects {self.sample_rate_hz} Hz audio; this server feeds {SAMPLE_RATE_HZ} Hz")

        decoding_cfg: Any = OmegaConf.create(OmegaConf.to_container(model.cfg.decoding, resolve=True))
        with open_dict(decoding_cfg):
            decoding_cfg.strategy = "greedy_batch"
            decoding_cfg.greedy = decoding_cfg.get("greedy") or {}
            decoding_cfg.greedy.max_symbols = max_symbols_per_step
            # Word/segment/char timestamps from the decoder's frame offsets; they do not change the text.
            decoding_cfg.compute_timestamps = True
            decoding_cfg.rnnt_timestamp_type = "all"
            decoding_cfg.segment_seperators = [".", "!", "?"]
        self._decoding_cfg = decoding_cfg
        self._decodings: dict[tuple[bool, bool], Any] = {}  # (confidence, boosting) -> NeMo decoding (_decoding_for)
        # Compiled phrase lists, per decoding object (its multi-model holds them): cache key -> NeMo's request config.
        self._boosted: dict[int, OrderedDict[str, Any]] = {}
        self._spells: dict[str, bool] = {}  # character -> whether the tokenizer spells it (unspellable)
        self.diarizer: Diarizer | None = None  # build_engine sets it when PARAKEET_DIARIZATION_MODEL is
        self.cuda_graphs = False
        self.cuda_graphs_reason = "not a CUDA device" if device.type != "cuda" else "off (as constructed)"
        self.set_cuda_graphs(cuda_graphs)

        model.eval()
        for module in (model.encoder, model.decoder, model.joint):
            module.to(dtype=self.dtype)
        model.preprocessor.to(dtype=torch.float32)
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

    def set_cuda_graphs(self, on: bool) -> None:
        """Rebuild the decoding with or without NeMo's CUDA-graph decoder (on a CPU it stays off). Call it from the
        GPU thread, between batches; the confidence-keeping decoding is rebuilt on its next use."""
        from omegaconf import OmegaConf, open_dict

        cfg: Any = OmegaConf.create(OmegaConf.to_container(self._decoding_cfg, resolve=True))
        with open_dict(cfg):
            cfg.greedy.use_cuda_graph_decoder = bool(on and self.device.type == "cuda")
        self.model.change_decoding_strategy(cfg, verbose=False)
        self.cuda_graphs = bool(cfg.greedy.use_cuda_graph_decoder)
        self._decodings = {}
        self._boosted = {}

    def transcribe(
        self,
        waveforms: Sequence[npt.NDArray[np.float32]],
        timestamps: Sequence[bool] | None = None,
        confidence: Sequence[bool] | None = None,
        keywords: Sequence[KeyPhrases | None] | None = None,
    ) -> BatchResult:
        """Transcribe a batch of waveforms in one padded forward pass (see `_transcribe`).

        Raises:
            ValueError: empty batch, an empty waveform, or `timestamps` of another length.
            DeviceOutOfMemory: the padded batch does not fit on the device (the cache is emptied first, so
                the caller can split the batch and retry).
        """
        try:
            return self._transcribe(waveforms, timestamps, confidence, keywords)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            n_samples = max((len(w) for w in waveforms), default=0) * len(waveforms)
            raise DeviceOutOfMemory(
                f"out of device memory on a batch of {len(waveforms)} ({n_samples / SAMPLE_RATE_HZ:.0f} s padded)"
            ) from exc

    @torch.inference_mode()
    def _transcribe(
        self,
        waveforms: Sequence[npt.NDArray[np.float32]],
        timestamps: Sequence[bool] | None,
        confidence: Sequence[bool] | None = None,
        keywords: Sequence[KeyPhrases | None] | None = None,
    ) -> BatchResult:
        """Transcribe a batch of waveforms in one padded forward pass.

        Args:
            waveforms: float32 mono 16 kHz arrays, each of shape [T_i], T_i >= 1.
            timestamps: per waveform, whether to compute its word/segment/char timestamps (None: for all).
                They cost Python time on this thread (`parakeet.core.timestamps`, ~0.3 ms per 15 s item; NeMo's
                own code where the decoding needs it) and never change the text.
            keywords: per waveform, the key phrases to boost (None: none); see `decode_encoded`.

        Returns:
            One transcript per waveform, in input order, the batch's compute time, and `stages_ms`: host
            time in features + encoder, greedy decoding, timestamps, and building the records (with
            `sync_stages`, the device is synchronised after the encoder so that the split is true on a GPU).

        Raises:
            ValueError: empty batch, an empty waveform, or `timestamps` of another length.
            torch.OutOfMemoryError: the padded batch does not fit.
        """
        if not waveforms:
            raise ValueError("empty batch")
        lengths = [len(w) for w in waveforms]
        if min(lengths) < 1:
            raise ValueError("empty waveform in batch")
        want = [True] * len(waveforms) if timestamps is None else list(timestamps)
        conf = [False] * len(waveforms) if confidence is None else list(confidence)
        if len(want) != len(waveforms) or len(conf) != len(waveforms):
            raise ValueError(f"{len(want)} timestamp and {len(conf)} confidence flags for a batch of {len(waveforms)}")
        if keywords is not None and len(keywords) != len(waveforms):
            raise ValueError(f"{len(keywords)} keyword lists for a batch of {len(waveforms)}")
        t0 = time.perf_counter()
        # NeMo's transcribe() leaves the modules in train mode (dropout on): re-assert eval every batch.
        self.model.eval()
        batch = np.zeros((len(waveforms), max(lengths)), dtype=np.float32)
        for i, w in enumerate(waveforms):
            batch[i, : len(w)] = w
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)  # [B, T] float32
        x_lens = torch.tensor(lengths, dtype=torch.int64, device=self.device)  # [B]

        feats, feat_lens = self.model.preprocessor(input_signal=x, length=x_lens)  # [B, n_mels, T_f], [B]
        enc, enc_lens = self.model.encoder(audio_signal=feats.to(self.dtype), length=feat_lens)  # [B, D, T_enc]
        if self.sync_stages and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_enc = time.perf_counter()
        transcripts, stages_ms = self.decode_encoded(enc, enc_lens, want, conf, keywords)
        t_end = time.perf_counter()
        stages_ms["features_encoder"] = (t_enc - t0) * 1000
        return BatchResult(transcripts, (t_end - t0) * 1000.0, stages_ms)

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
            timestamps: B flags (see `_transcribe`).
            confidence: B flags (see `_transcribe`); a batch with any runs the confidence-keeping decoder.
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
        decoding = self._decoding_for(any(conf), boosting)
        partial = self._boosting(decoding, keywords) if keywords is not None and boosting else None
        raw = decoding.decoding(encoder_output=enc, encoded_lengths=enc_lens, partial_hypotheses=partial)[0]
        hyps = decoding.decode_hypothesis(raw)
        t_dec = time.perf_counter()
        spans = [self._timestamps(decoding, h) if w else _NO_TIMESTAMPS for h, w in zip(hyps, timestamps, strict=True)]
        if any(conf):  # after timestamps, as NeMo orders it: word confidence follows the decoded words
            decoding.compute_confidence([h for h, c in zip(hyps, conf, strict=True) if c])
        t_ts = time.perf_counter()
        transcripts = [
            Transcript(
                text=h.text if isinstance(h.text, str) else "",
                num_tokens=len(h.y_sequence) if h.y_sequence is not None else 0,
                encoder_frames=int(n),
                words=_with_confidence(ts.words, h.word_confidence) if c else ts.words,
                segments=ts.segments,
                chars=self._token_scores(h, ts.chars) if c else ts.chars,
            )
            for h, n, ts, c in zip(hyps, enc_lens.tolist(), spans, conf, strict=True)
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

    def stream_step(self, requests: Sequence[StepRequest]) -> StepBatchResult:
        """Advance B streams by one buffered-streaming step (see `_stream_step`).

        Raises:
            ValueError: an empty batch or window, or a window too short for its `left_frames + commit_frames`.
            DeviceOutOfMemory: the padded step does not fit on the device.
        """
        try:
            return self._stream_step(requests)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise DeviceOutOfMemory(f"out of device memory on a streaming step of {len(requests)}") from exc

    @torch.inference_mode()
    def _stream_step(self, requests: Sequence[StepRequest]) -> StepBatchResult:
        """One step of buffered chunked streaming for B streams at once: the pattern of NeMo's
        `BufferedRNNTPipeline` (nemo/collections/asr/inference/pipelines/buffered_rnnt_pipeline.py; docs/streaming.md).

        Every window [left | chunk | right] goes through the preprocessor and the full-context encoder in one
        padded batch ([B, W] -> encoder frames [B, T, D]). The chunk frames of each window are decoded by the TDT
        label-looping computer from the stream's carried decoder state (NeMo's `merge_to_batched_state` /
        `split_batched_state`: streams may join or leave at any step; a TDT duration that overshoots the chunk
        is carried as `time_jumps`) and committed; then the right-context frames are decoded speculatively from
        the new state, for the partial text only.

        Returns:
            Per stream: all committed tokens, their text, the partial text, the new state, the frames committed.
        """
        if not requests:
            raise ValueError("empty step")
        lengths = [len(r.window) for r in requests]
        if min(lengths) < 1:
            raise ValueError("empty window in step")
        t0 = time.perf_counter()
        self.model.eval()
        batch = np.zeros((len(requests), max(lengths)), dtype=np.float32)
        for i, r in enumerate(requests):
            batch[i, : len(r.window)] = r.window
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)  # [B, W]
        x_lens = torch.tensor(lengths, dtype=torch.int64, device=self.device)
        feats, feat_lens = self.model.preprocessor(input_signal=x, length=x_lens)  # per-window normalisation
        enc, enc_lens = self.model.encoder(audio_signal=feats.to(self.dtype), length=feat_lens)  # [B, D, T]
        frames = enc.transpose(1, 2)  # [B, T, D]
        boosted = [i for i, r in enumerate(requests) if r.keywords is not None]
        if not boosted:
            results = self._decode_step(frames, enc_lens, requests)
        else:  # a boosted stream's decoder state carries its boosting tree's: decode the two groups apart
            plain = [i for i, r in enumerate(requests) if r.keywords is None]
            by_index: dict[int, StepResult] = {}
            for group, boosting in ((plain, False), (boosted, True)):
                if group:
                    at = torch.tensor(group, device=self.device)
                    got = self._decode_step(frames[at], enc_lens[at], [requests[i] for i in group], boosting)
                    by_index.update(zip(group, got, strict=True))
            results = [by_index[i] for i in range(len(requests))]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return StepBatchResult(results, (time.perf_counter() - t0) * 1000.0)

    def _decode_step(
        self, enc: torch.Tensor, enc_lens: torch.Tensor, requests: Sequence[StepRequest], boosting: bool = False
    ) -> list[StepResult]:
        """The decoding half of `_stream_step`: encoder frames [B, T, D] (engine dtype) and their valid lengths [B]
        to each stream's committed tokens, texts and new decoder state. `boosting`: every request carries key
        phrases, decoded by the boosting decoding's computer with each stream's tree (as NeMo's
        `BufferedRNNTPipeline` passes `multi_biasing_ids`: nemo/collections/asr/inference/pipelines/
        buffered_rnnt_pipeline.py)."""
        n_frames, dim = enc.shape[1], enc.shape[2]
        available = [int(n) - r.left_frames for n, r in zip(enc_lens.tolist(), requests, strict=True)]
        commit = [a if r.commit_frames is None else r.commit_frames for a, r in zip(available, requests, strict=True)]
        for a, c, r in zip(available, commit, requests, strict=True):
            if c < 0 or c > a or r.left_frames < 0:
                raise ValueError(f"window of {len(r.window)} samples has {a} frames after {r.left_frames}; asked {c}")
        left_t = torch.tensor([r.left_frames for r in requests], device=self.device)
        commit_t = torch.tensor(commit, dtype=torch.int64, device=self.device)
        idx = (torch.arange(n_frames, device=self.device)[None, :] + left_t[:, None]).clamp(max=n_frames - 1)
        chunk = enc.gather(1, idx[:, :, None].expand(-1, -1, dim))  # chunk frames first, [B, T, D]
        decoding = self._decoding_for(False, boosting)
        computer = decoding.decoding.decoding_computer
        ids = None
        if boosting:
            trees = [self._compiled(decoding, r.keywords) for r in requests if r.keywords is not None]
            ids = torch.tensor([cfg.multi_model_id for cfg in trees], device=self.device)
        states = [r.state for r in requests]
        prev = None if all(s is None for s in states) else computer.merge_to_batched_state(list(states))
        hyps, batched_state = computer(x=chunk, out_len=commit_t, prev_batched_state=prev, multi_biasing_ids=ids)
        new_states = computer.split_batched_state(batched_state)[: len(requests)]  # CUDA graphs: see _hyp_ids
        spec_lens = [a - c for a, c in zip(available, commit, strict=True)]
        spec_ids: list[list[int]] = [[] for _ in requests]
        if any(spec_lens):
            spec_idx = (idx + commit_t[:, None]).clamp(max=n_frames - 1)
            spec_frames = enc.gather(1, spec_idx[:, :, None].expand(-1, -1, dim))
            spec_hyps, _ = computer(
                x=spec_frames,
                out_len=torch.tensor(spec_lens, dtype=torch.int64, device=self.device),
                prev_batched_state=computer.merge_to_batched_state(list(new_states)),
                multi_biasing_ids=ids,
            )
            spec_ids = _hyp_ids(spec_hyps, len(requests))
        tokenizer = self.model.tokenizer
        results = []
        committed_ids = _hyp_ids(hyps, len(requests))
        for r, new, spec, state, c in zip(requests, committed_ids, spec_ids, new_states, commit, strict=True):
            tokens = r.tokens + tuple(new)
            committed_text = tokenizer.ids_to_text(list(tokens)) if tokens else ""
            text = tokenizer.ids_to_text(list(tokens) + spec) if spec else committed_text
            results.append(StepResult(tokens, committed_text, text, state, c))
        return results

    def _decoding_for(self, confidence: bool, boosting: bool) -> Any:
        """The decoding object for a batch: the model's own, or a second one over the same decoder and joint (no
        weights copied), built on first use, that keeps confidence and/or boosts key phrases; their greedy path and
        text are the default's (tests/unit/test_inference.py, tests/unit/test_keywords.py).

        Confidence: NeMo's `ConfidenceConfig` with `max_prob` at alpha 1 (the greedy token's probability p,
        normalised over the V token classes as (pV - 1) / (V - 1)), blank frames excluded, a word's confidence the
        minimum of its tokens' (NeMo's default aggregation). Source: nemo/collections/asr/parts/utils/
        asr_confidence_utils.py (ConfidenceConfig, the measure bank). Boosting: `greedy.enable_per_stream_biasing`
        (its multi-model costs a batch ~6% even with no phrase on this CPU: BENCHMARKS.md "Custom vocabulary", so
        batches without phrases keep the model's own decoding)."""
        if not confidence and not boosting:
            return self.model.decoding
        key = (confidence, boosting)
        if key not in self._decodings:
            from omegaconf import OmegaConf, open_dict

            cfg: Any = OmegaConf.create(OmegaConf.to_container(self.model.decoding.cfg, resolve=True))
            with open_dict(cfg):
                if confidence:
                    cfg.confidence_cfg = {
                        "preserve_frame_confidence": True, "preserve_token_confidence": True,
                        "preserve_word_confidence": True, "exclude_blank": True, "aggregation": "min",
                        "method_cfg": {"name": "max_prob", "alpha": 1.0},
                    }  # fmt: skip
                cfg.greedy.enable_per_stream_biasing = boosting
            kind = type(self.model.decoding)
            self._decodings[key] = kind(
                cfg, decoder=self.model.decoder, joint=self.model.joint, tokenizer=self.model.tokenizer
            )
        return self._decodings[key]

    def _boosting(self, decoding: Any, keywords: Sequence[KeyPhrases | None]) -> list[Any]:
        """NeMo's partial hypotheses that carry each item's phrase boosting (None for items without phrases): an
        empty hypothesis holding the item's compiled `BiasingRequestItemConfig` (`_compiled`), as
        `EncDecRNNTModel._transcribe_on_begin` sets them up (nemo/collections/asr/models/rnnt_models.py)."""
        return [
            None if kp is None else _BoostedHypothesis(
                score=0.0, y_sequence=None, timestamp=None, biasing_cfg=self._compiled(decoding, kp)
            )
            for kp in keywords
        ]  # fmt: skip

    def _compiled(self, decoding: Any, kp: KeyPhrases) -> Any:
        """The `BiasingRequestItemConfig` of `kp`, its boosting tree in `decoding`'s biasing multi-model (its
        `multi_model_id` is the tree's id there): compiled on first use, kept for the last 64 distinct lists per
        decoding (least recently used dropped)."""
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import BoostingTreeModelConfig

        multi = decoding.decoding.decoding_computer.biasing_multi_model
        compiled = self._boosted.setdefault(id(multi), OrderedDict())
        cfg = compiled.get(kp.cache_key)
        if cfg is None:
            tree = BoostingTreeModelConfig(key_phrases_list=list(kp.phrases), use_triton=self.device.type == "cuda")
            cfg = BiasingRequestItemConfig(boosting_model_cfg=tree, boosting_model_alpha=kp.weight)
            cfg.add_to_multi_model(tokenizer=self.model.tokenizer, biasing_multi_model=multi)
            compiled[kp.cache_key] = cfg
            while len(compiled) > _MAX_COMPILED_PHRASE_LISTS:
                _, old = compiled.popitem(last=False)
                old.remove_from_multi_model(biasing_multi_model=multi)
        compiled.move_to_end(kp.cache_key)
        return cfg

    def _timestamps(self, decoding: Any, hyp: Any) -> HypothesisTimestamps:
        """One hypothesis' word, segment and token timestamps: `parakeet.core.timestamps.tdt_timestamps` over
        the token table, or (`timestamps_impl == "nemo"`) NeMo's `compute_rnnt_timestamps(hyp, "all")` and
        `process_timestamp_outputs`, which give the same (tests/unit/test_timestamps.py)."""
        if self.timestamps_impl == "parakeet" and self.token_table is not None:
            return tdt_timestamps(
                _as_list(hyp.y_sequence), _as_list(hyp.timestamp), _as_list(hyp.token_duration), self.token_table
            )
        timed = decoding.compute_rnnt_timestamps(hyp, "all")
        process_timestamp_outputs([timed], self.subsampling_factor, self.window_stride_s)  # in place
        return HypothesisTimestamps(_spans(timed, "word"), _spans(timed, "segment"), _spans(timed, "char"))

    def _token_scores(self, hyp: Any, chars: tuple[TimedSpan, ...]) -> tuple[TimedSpan, ...]:
        """The hypothesis' tokens (its "char" timestamps, spelled as the tokenizer's pieces) with their confidence c
        and log-probability log(p), p = (c (V - 1) + 1) / V inverting the max_prob normalisation (V: token classes
        with blank)."""
        scores = [float(c) for c in (hyp.token_confidence or [])]
        ids = [int(i) for i in (hyp.y_sequence.tolist() if hasattr(hyp.y_sequence, "tolist") else hyp.y_sequence)]
        pieces = self.model.tokenizer.ids_to_tokens(ids) if ids else []
        if not len(scores) == len(chars) == len(pieces):
            return chars
        v = int(self.model.joint.num_classes_with_blank)
        return tuple(  # the token as the tokenizer spells it (SentencePiece marks a word start with U+2581)
            replace(
                span, text=piece, confidence=round(c, 4), logprob=round(math.log(max((c * (v - 1) + 1) / v, 1e-12)), 4)
            )
            for span, c, piece in zip(chars, scores, pieces, strict=True)
        )

    def unspellable(self, text: str) -> str:
        """The distinct characters of `text` that the model's tokenizer maps to its unknown token (a phrase holding
        one cannot be boosted as written), in first-seen order; "" when it spells them all. Whitespace always spells.

        Thread-safe: only the tokenizer's encoder runs (SentencePiece keeps no state between encodings), so the
        server calls it on its event loop while the GPU thread decodes. Each character is encoded once."""
        unk = getattr(self.model.tokenizer, "unk_id", None)
        if not isinstance(unk, int) or unk < 0:
            return ""
        missing = []
        for char in dict.fromkeys(text):
            if char.isspace():
                continue
            spells = self._spells.get(char)
            if spells is None:
                spells = self._spells[char] = unk not in self.model.tokenizer.text_to_ids(char)
            if not spells:
                missing.append(char)
        return "".join(missing)

    def warmup(self, duration_s: float = 2.0) -> float:
        """Run one batch of seeded noise so that first requests don't pay for lazy init. Returns ms."""
        rng = np.random.default_rng(0)
        noise = (0.01 * rng.standard_normal(int(duration_s * SAMPLE_RATE_HZ))).astype(np.float32)
        if self.diarizer is not None:
            self.diarizer.diarize([noise])
        return self.transcribe([noise]).compute_ms

    def device_info(self) -> DeviceInfo:
        """GPU index, name and memory (bytes) and the decoder's CUDA graphs for /health; the CPU has name "cpu"
        and no memory figures."""
        if self.device.type != "cuda":
            return replace(CPU_DEVICE, cuda_graphs_reason=self.cuda_graphs_reason)
        free, total = torch.cuda.mem_get_info(self.device)
        return DeviceInfo(
            type="cuda",
            index=self.device.index,
            name=torch.cuda.get_device_name(self.device),
            memory_used_bytes=int(total - free),
            memory_total_bytes=int(total),
            cuda_graphs=self.cuda_graphs,
            cuda_graphs_reason=self.cuda_graphs_reason,
        )


def _hyp_ids(hyps: Any, batch_size: int) -> list[list[int]]:
    """Token ids of the first `batch_size` items of NeMo's `BatchedHyps` (transcript [B', L] padded,
    current_lengths [B']). With CUDA graphs B' is the graphs' allocated batch, which may exceed the real batch (as
    NeMo's own `batched_hyps_to_hypotheses(..., batch_size=x.shape[0])` says: nemo/collections/asr/parts/utils/
    rnnt_utils.py)."""
    lengths = hyps.current_lengths[:batch_size].tolist()
    rows = hyps.transcript[:batch_size].tolist()
    return [row[:n] for row, n in zip(rows, lengths, strict=True)]


class SileroVad:
    """Silero VAD v6 (https://github.com/snakers4/silero-vad, MIT; weights ship in the `silero-vad` wheel) run
    as a stateless, batched function: implements `parakeet.core.engine.VoiceActivityModel`.

    The packaged TorchScript model keeps one stream's recurrent state inside the module; this wrapper calls its
    16 kHz network directly, `net(x [B, 64 + 512], state [2, B, 128]) -> (prob [B, 1], state)`, with the
    64-sample context and the state of each stream passed in and out, as the wheel's own `forward` does
    (silero_vad/data/silero_vad.jit). CPU, float32.
    """

    frame_samples = 512
    context_samples = 64

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        import silero_vad  # its import calls torch.set_num_threads(1): put ours back

        torch.set_num_threads(threads)
        self._net = silero_vad.load_silero_vad(onnx=False)._model

    @torch.inference_mode()
    def speech_probs(
        self, frames: Sequence[npt.NDArray[np.float32]], states: Sequence[Any]
    ) -> tuple[list[float], list[Any]]:
        """See `VoiceActivityModel.speech_probs`; a state is (context [64] float32 tensor, rnn [2, 1, 128])."""
        n = len(frames)
        context = torch.stack([s[0] if s is not None else torch.zeros(self.context_samples) for s in states])
        rnn = torch.cat([s[1] if s is not None else torch.zeros(2, 1, 128) for s in states], dim=1)
        x = torch.cat([context, torch.from_numpy(np.stack(frames).astype(np.float32, copy=False))], dim=1)
        probs, new_rnn = self._net(x, rnn)
        new_states = [(x[i, -self.context_samples :].clone(), new_rnn[:, i : i + 1].clone()) for i in range(n)]
        return [float(p) for p in probs[:, 0].tolist()], new_states


def _with_confidence(spans: tuple[TimedSpan, ...], scores: Any) -> tuple[TimedSpan, ...]:
    """Words with NeMo's word confidence, when it has one per word (else the words as they are)."""
    values = [float(c) for c in (scores or [])]
    if len(values) != len(spans):
        return spans
    return tuple(replace(span, confidence=round(c, 4)) for span, c in zip(spans, values, strict=True))


_NO_TIMESTAMPS = HypothesisTimestamps((), (), ())
_MAX_COMPILED_PHRASE_LISTS = 64  # boosting trees kept compiled per decoding (each a few MB on the device at most)


class _BoostedHypothesis(Hypothesis):  # type: ignore[misc]
    """An empty partial hypothesis carrying a `BiasingRequestItemConfig` that becomes the decoded continuation when
    NeMo merges it: its sequence fields are None, so `merge_` takes the continuation's own, and `token_duration`,
    which NeMo 3.0.0's `Hypothesis.merge_` does not merge (so boosting with timestamps through
    `Hypothesis.empty_with_biasing_cfg` loses the TDT durations and its timestamp code raises), is taken over too."""

    def merge_(self, other: Any) -> Any:
        super().merge_(other)
        self.token_duration = other.token_duration
        return self


def _as_list(values: Any) -> list[int]:
    """A hypothesis field (tensor, list or None) as a list of ints."""
    if values is None:
        return []
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def token_table(decoding: Any, window_stride_s: float, subsampling_factor: int) -> TokenTable | None:
    """The model's `TokenTable` for `parakeet.core.timestamps`, or None where its decoding is one that module does
    not reproduce (then NeMo's own timestamp code runs): it covers TDT with a SentencePiece BPE tokenizer, the
    word separator " " and no segment gap threshold, which is Parakeet-TDT's (and the test models') decoding."""
    tokenizer = getattr(decoding, "tokenizer", None)
    if tokenizer is None or not getattr(decoding, "_is_tdt", False):
        return None
    if decoding.word_seperator != " " or decoding.segment_gap_threshold or decoding.tokenizer_type != "bpe":
        return None
    if decoding.supported_punctuation is None:
        return None
    ids = list(range(int(decoding.blank_id)))
    return TokenTable(
        pieces=[decoding.decode_ids_to_tokens([i])[0] for i in ids],
        texts=[decoding.decode_ids_to_str([i]) for i in ids],
        punctuation=frozenset(decoding.supported_punctuation),
        decode_pieces=decoding.decode_tokens_to_str,
        blank_id=int(decoding.blank_id),
        segment_delimiters=tuple(decoding.segment_seperators),
        window_stride_s=window_stride_s,
        subsampling_factor=subsampling_factor,
    )


def _spans(hyp: Any, kind: str) -> tuple[TimedSpan, ...]:
    """NeMo's hyp.timestamp[kind] entries ({kind: text, "start": s, "end": s}) as TimedSpans."""
    entries = (getattr(hyp, "timestamp", None) or {}).get(kind) or []
    out = []
    for e in entries:
        text = e.get(kind)
        if isinstance(text, list):  # "char" entries hold a list of characters/subwords
            text = "".join(text)
        out.append(TimedSpan(str(text), round(float(e["start"]), 3), round(float(e["end"]), 3)))
    return tuple(out)


# The CUDA-graph self-check's fixed probe: offline batches of mixed lengths at these sizes, and streams leaving a
# batch step by step (issue 20; BENCHMARKS.md "GPU (H100)": graphs gave the same texts on 2026-11-22, and crashed
# on PyTorch 2.10 before that, so the check runs at every start rather than trusting a version).
_CHECK_BATCH_SIZES = (1, 3, 16)
_CHECK_STREAMS = 4
_CHECK_SEED = 20


def cuda_graphs_self_check(engine: ParakeetEngine) -> tuple[str | None, str]:
    """Decode a fixed probe with CUDA graphs off and then on, and compare.

    The probe is seeded random encoder output (graphs change only the decoder, and random frames make it emit
    many tokens): offline batches of sizes 1, 3 and 16 with mixed lengths (8-200 frames) with word timestamps, the
    size-3 batch again with confidence and again with key phrases on two items (NeMo's per-stream boosting, a
    decoding of its own), and streaming steps of a batch of 4 streams that shrinks to 3 and then 2
    (carried decoder states, speculative right context, a final step). Leaves the engine with graphs on.

    Returns:
        (problem, summary): problem is None when every token, text, word/segment/token timestamp, confidence
        (within 1e-3) and step result is equal, else one line saying what raised or the first difference;
        summary counts what was compared.
    """
    rng = np.random.default_rng(_CHECK_SEED)
    d_model = int(engine.model.cfg.encoder.d_model)

    def encoder_output(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = torch.from_numpy(rng.standard_normal((len(lengths), d_model, max(lengths))).astype(np.float32))
        return enc.to(engine.device, engine.dtype), torch.tensor(lengths, dtype=torch.int64, device=engine.device)

    offline = [encoder_output([int(n) for n in rng.integers(8, 200, size=b)]) for b in _CHECK_BATCH_SIZES]
    boosted: list[KeyPhrases | None] = []  # the size-3 batch's key phrases (per-stream boosting), set by the first run
    stream_enc = encoder_output([60] * _CHECK_STREAMS)[0].transpose(1, 2).contiguous()  # [S, 60, D]

    def run() -> tuple[list[list[Transcript]], list[list[StepResult]]]:
        with torch.inference_mode():
            outs = [engine.decode_encoded(enc, lens, [True] * len(lens))[0] for enc, lens in offline]
            enc, lens = offline[1]
            outs.append(engine.decode_encoded(enc, lens, [True] * len(lens), [True] * len(lens))[0])
            if not boosted:  # the first run (graphs off) picks phrases the tokenizer spells: words it emitted
                words = [w for t in outs[1] for w in t.text.split()]
                boosted[:] = [KeyPhrases((" ".join(words[:2]),)) if words else None, None,
                              KeyPhrases(tuple(dict.fromkeys(words[2:5])), 2.0) if words[2:5] else None]  # fmt: skip
            outs.append(engine.decode_encoded(enc, lens, [True] * len(lens), None, boosted)[0])
            steps: list[list[StepResult]] = []
            states: list[Any] = [None] * _CHECK_STREAMS
            tokens: list[tuple[int, ...]] = [()] * _CHECK_STREAMS
            for k, (left, commit) in enumerate([(0, 20), (10, 20), (20, None)]):
                n = _CHECK_STREAMS - k
                window = np.zeros(1, dtype=np.float32)  # the decoder never reads the samples
                reqs = [StepRequest(window, left, commit, states[i], tokens[i]) for i in range(n)]
                frames = stream_enc[:n, k * 20 : k * 20 + 40]
                lens = torch.full((n,), frames.shape[1], dtype=torch.int64, device=engine.device)
                got = engine._decode_step(frames, lens, reqs)
                states, tokens = [r.state for r in got], [r.tokens for r in got]
                steps.append(got)
        return outs, steps

    engine.set_cuda_graphs(False)
    ref_out, ref_steps = run()
    engine.set_cuda_graphs(True)
    n_tokens = sum(t.num_tokens for batch in ref_out for t in batch)
    summary = f"{sum(len(b) for b in ref_out)} items, {n_tokens} tokens, {sum(len(s) for s in ref_steps)} stream steps"
    try:
        got_out, got_steps = run()
    except Exception as exc:  # noqa: BLE001 - any failure of the graph decoder means: serve without it
        return f"the CUDA-graph decoder raised {type(exc).__name__}: {exc}", summary
    return _first_difference(ref_out, got_out, ref_steps, got_steps), summary


def _first_difference(
    ref_out: list[list[Transcript]],
    got_out: list[list[Transcript]],
    ref_steps: list[list[StepResult]],
    got_steps: list[list[StepResult]],
) -> str | None:
    """The first difference between the probe's outputs without and with graphs, as one line (None: equal)."""
    for b, (ref, got) in enumerate(zip(ref_out, got_out, strict=True)):
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            for name in ("text", "num_tokens", "encoder_frames", "segments"):
                if getattr(r, name) != getattr(g, name):
                    return f"offline batch {b} item {i}: {name} differs ({getattr(r, name)!r} vs {getattr(g, name)!r})"
            for name in ("words", "chars"):
                for x, y in zip(getattr(r, name), getattr(g, name), strict=False):
                    same_conf = (x.confidence is None) == (y.confidence is None) and (
                        x.confidence is None or y.confidence is None or abs(x.confidence - y.confidence) <= 1e-3
                    )
                    if (x.text, x.start_s, x.end_s) != (y.text, y.start_s, y.end_s) or not same_conf:
                        return f"offline batch {b} item {i}: {name} differ ({x} vs {y})"
                if len(getattr(r, name)) != len(getattr(g, name)):
                    return f"offline batch {b} item {i}: {len(getattr(r, name))} vs {len(getattr(g, name))} {name}"
    for k, (ref_s, got_s) in enumerate(zip(ref_steps, got_steps, strict=True)):
        for i, (rs, gs) in enumerate(zip(ref_s, got_s, strict=True)):
            if (rs.tokens, rs.text, rs.committed_frames) != (gs.tokens, gs.text, gs.committed_frames):
                return f"stream step {k} stream {i}: {rs.tokens} {rs.text!r} vs {gs.tokens} {gs.text!r}"
    return None


def choose_cuda_graphs(engine: ParakeetEngine, mode: str, cuda: bool) -> None:
    """Apply `PARAKEET_CUDA_GRAPHS` (`mode`: "auto", "true" or "false") to the engine, and say why in
    `engine.cuda_graphs_reason` (shown by /health, the `parakeet_build_info` metric and the start-up log).

    auto on a CUDA device runs `cuda_graphs_self_check` and serves with graphs only if it found no difference;
    otherwise one WARNING line says what failed or differed and graphs stay off. On a CPU, auto means off.
    """
    if not cuda:
        engine.set_cuda_graphs(False)
        engine.cuda_graphs_reason = "not a CUDA device"
    elif mode == "false":
        engine.set_cuda_graphs(False)
        engine.cuda_graphs_reason = "off: PARAKEET_CUDA_GRAPHS=false"
    elif mode == "true":
        engine.set_cuda_graphs(True)
        engine.cuda_graphs_reason = "on: PARAKEET_CUDA_GRAPHS=true"
    else:
        problem, summary = cuda_graphs_self_check(engine)
        if problem is None:
            engine.cuda_graphs_reason = f"on: the self-check found no difference ({summary})"
        else:
            engine.set_cuda_graphs(False)
            engine.cuda_graphs_reason = f"off: the self-check failed: {problem}"
            log.warning("CUDA graphs off: the start-up self-check failed (%s): %s", summary, problem)
    log.info("TDT decoder, CUDA graphs: %s", engine.cuda_graphs_reason)


def build_engine(settings: Settings, device: torch.device, tuning: Tuning | None = None) -> ParakeetEngine:
    """Load `settings.model` onto `device` and wrap it for serving (see `load_asr_model`, `ParakeetEngine`).

    Uses the settings `model`, `precision`, `cuda_graphs` and `torch_threads` (README, "Settings") and
    `tuning.max_symbols_per_step`.

    Raises:
        ModelLoadError: the model could not be loaded.
    """
    configure_logging(settings.log_format, settings.log_level)  # again: importing NeMo added its own handler
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    if device.type == "cuda":
        if device.index is None:  # "cuda" alone: torch.cuda.set_device wants an index (seen with torch 2.11)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    t0 = time.perf_counter()
    model = load_asr_model(settings.model, device)
    engine = ParakeetEngine(
        model,
        device,
        model_name=settings.model,
        precision=settings.precision,
        cuda_graphs=False,
        max_symbols_per_step=(tuning or Tuning()).max_symbols_per_step,
    )
    choose_cuda_graphs(engine, settings.cuda_graphs, cuda=device.type == "cuda")
    if settings.diarization_model:
        engine.diarizer = build_diarizer(settings.diarization_model, device, settings.precision)
    log.info(
        "loaded %s on %s (%s, %.1f M parameters) in %.1f s",
        settings.model,
        device,
        engine.dtype,
        engine.num_parameters / 1e6,
        time.perf_counter() - t0,
    )
    return engine


class SortformerDiarizer:
    """Speaker activity with NeMo's Sortformer (`SortformerEncLabelModel`), batched across requests: NeMo's own
    modules run by hand on a zero-padded batch (mel preprocessor, FastConformer encoder, Transformer encoder,
    per-speaker sigmoids; the streaming model's speaker-cache steps, `forward_streaming_step`, when its config says
    `streaming_mode`), then NeMo's own post-processing per speaker (`ts_vad_post_processing` with
    `load_postprocessing_from_yaml`'s defaults, times rounded to 10 ms, overlapping intervals merged).

    Two things differ from NeMo's `forward` on purpose, so that a file's speakers never depend on its batch-mates
    and a long file's memory stays bounded:
    - an offline model's waveform is scaled by its own peak (NeMo's `process_signal` scales a batch by the batch's
      peak), so each file gets exactly what `model.diarize()` gives it alone (tests/unit/test_diarization.py);
    - a waveform longer than `feature_chunk_s` gets its mel features computed a chunk at a time (`mel_features`):
      the STFT's intermediates (~0.6 MB per second of audio) never exist for the whole file, only the features
      themselves (n_mels x 100 float32 per second: 51 KB/s for 128 mels).

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
        self.max_speakers = int(model._cfg.max_num_of_spks)
        self.streaming = bool(model._cfg.get("streaming_mode", False))
        # An offline Sortformer attends over the whole clip (memory ~ length squared): at most the 90 s sessions it
        # is trained on (NeMo's sortformer configs, `session_len_sec: 90`); the streaming one's speaker cache
        # bounds its memory at any length.
        self.max_audio_s: float | None = None if self.streaming else 90.0
        self.subsampling = int(model._cfg.encoder.subsampling_factor)  # 10 ms feature frames per output frame
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
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, self.dtype != torch.float32):
                yield
        except torch.OutOfMemoryError as exc:
            raise DeviceOutOfMemory(f"the diarization batch of {batch_size} does not fit") from exc

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
        if self.streaming:  # NeMo's forward_streaming, by hand: its speaker-cache steps, without its progress bar
            m = self.model
            chunk_s = m.sortformer_modules.chunk_len * self.subsampling * float(featurizer.hop_length) / SAMPLE_RATE_HZ
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
        cpu = preds.float().cpu()  # [B, T_out, S]
        frames = [min(cpu.shape[1], math.ceil(k / self.subsampling)) for k in n]
        yield [p[:k] for p, k in zip(cpu, frames, strict=True)]

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


def mel_features(preprocessor: Any, waveform: torch.Tensor, chunk_samples: int, out: torch.Tensor) -> None:
    """NeMo's mel features of one waveform, written into `out`, computed `chunk_samples` of audio at a time so that
    only one chunk's STFT exists at once; equal to `preprocessor(waveform)`'s to float rounding
    (tests/unit/test_diarization.py). A waveform of at most one chunk goes to the preprocessor whole.

    Each chunk is cut with a margin of whole hops covering half a window and preemphasis' one sample before, so its
    frames see exactly the samples they see in the whole file (`center=True` frames: frame t is centred on sample
    t x hop); "per_feature" normalization then uses the whole file's per-mel mean and unbiased standard deviation,
    as NeMo's `normalize_batch`. A featurizer this cannot cut exactly (exact_pad, frame splicing, other
    normalizations) gets the whole waveform at once.

    Args:
        preprocessor: NeMo's `AudioToMelSpectrogramPreprocessor`.
        waveform: float32 [T] on the preprocessor's device.
        chunk_samples: audio per chunk, samples (> 0).
        out: float32 [n_mels, T_feat] on the same device, T_feat = `featurizer.get_seq_len(T)` (T // hop).
    """
    from nemo.collections.asr.parts.preprocessing.features import CONSTANT

    f = preprocessor.featurizer
    exact_cut = f.stft_pad_amount is None and f.frame_splicing == 1 and f.normalize in ("per_feature", "NA", None, "")
    if len(waveform) <= chunk_samples or not exact_cut:  # the whole waveform at once, as NeMo
        length = torch.tensor([len(waveform)], device=waveform.device)
        feats, n = preprocessor(input_signal=waveform[None], length=length)
        out.copy_(feats[0, :, : int(n[0])])
        return
    hop = int(f.hop_length)
    margin = hop * math.ceil((f.n_fft // 2 + 1) / hop)
    per_chunk = max(1, chunk_samples // hop)  # feature frames per chunk
    total = out.shape[1]  # = len(waveform) // hop
    normalize, f.normalize = f.normalize, None  # the chunks unnormalized (the whole file's statistics below)
    try:  # (the featurizer's `forward` is bound in its __dict__, so a copy would still normalize)
        for a in range(0, total, per_chunk):
            b = min(total, a + per_chunk)
            s0, s1 = max(0, a * hop - margin), min(len(waveform), b * hop + margin)
            part, _ = f(waveform[None, s0:s1].float(), torch.tensor([s1 - s0], device=waveform.device))
            out[:, a:b] = part[0, :, a - s0 // hop : b - s0 // hop]
    finally:
        f.normalize = normalize
    if f.normalize == "per_feature":
        mean = out.mean(dim=1, keepdim=True)
        squares = torch.zeros_like(mean)
        for a in range(0, total, per_chunk):  # (the whole file's deviations at once would double its memory)
            squares += ((out[:, a : a + per_chunk] - mean) ** 2).sum(dim=1, keepdim=True)
        std = torch.sqrt(squares / max(total - 1, 1)) + CONSTANT  # as NeMo's normalize_batch
        out.sub_(mean).div_(std)


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
