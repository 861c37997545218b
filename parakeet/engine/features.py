"""Waveforms to mel features: the zero-padded batch on the device, and long files' features a chunk at a time.

Both run NeMo's own preprocessor (`AudioToMelSpectrogramPreprocessor`, float32: its STFT and log-mel need the range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch


def padded_batch(
    waveforms: Sequence[npt.NDArray[np.float32]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """B waveforms (float32 [T_i], T_i >= 1) as one zero-padded float32 batch [B, max T_i] and their lengths [B]
    int64, on `device`.

    Raises:
        ValueError: an empty batch or an empty waveform.
    """
    if not waveforms:
        raise ValueError("empty batch")
    lengths = [len(w) for w in waveforms]
    if min(lengths) < 1:
        raise ValueError("empty waveform in batch")
    batch = np.zeros((len(waveforms), max(lengths)), dtype=np.float32)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = w
    x = torch.from_numpy(batch).to(device, non_blocking=True)
    return x, torch.tensor(lengths, dtype=torch.int64, device=device)


def batch_features(
    preprocessor: Any, waveforms: Sequence[npt.NDArray[np.float32]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded batch's mel features [B, n_mels, T_feat] float32 and their valid frames [B] int64 (NeMo's
    preprocessor normalises each item over its own valid frames).

    Raises:
        ValueError: an empty batch or an empty waveform.
    """
    x, x_lens = padded_batch(waveforms, device)
    features, lengths = preprocessor(input_signal=x, length=x_lens)
    return features, lengths


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
        _normalize_per_feature(out, per_chunk)


def _normalize_per_feature(out: torch.Tensor, per_chunk: int) -> None:
    """NeMo's `normalize_batch` "per_feature" in place on [n_mels, T]: each mel's mean and unbiased standard
    deviation over the file, the deviations summed a chunk at a time (the whole file's at once would double its
    memory)."""
    from nemo.collections.asr.parts.preprocessing.features import CONSTANT

    total = out.shape[1]
    mean = out.mean(dim=1, keepdim=True)
    squares = torch.zeros_like(mean)
    for a in range(0, total, per_chunk):
        squares += ((out[:, a : a + per_chunk] - mean) ** 2).sum(dim=1, keepdim=True)
    std = torch.sqrt(squares / max(total - 1, 1)) + CONSTANT
    out.sub_(mean).div_(std)
