"""The encoder seam: mel features in, encoder frames out.

Everything after the encoder (TDT decoding, phrase boosting, timestamps, confidence, stream states) is NeMo's and
is the same whatever runs the encoder; `build_engine` chooses the `Encoder` and the engine calls nothing else for
that step, so a second implementation (ONNX Runtime, say) replaces only this object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from parakeet.engine.features import batch_features


class Encoder(Protocol):
    """Turns a batch of mel features into encoder frames on the engine's device.

    Attributes:
        backend: what runs it ("torch"), as /health names it.
    """

    backend: str

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch.

        Args:
            features: mel features [B, n_mels, T_feat], float32, on the engine's device.
            lengths: valid feature frames per item, [B] int64.

        Returns:
            Encoder frames [B, D, T_enc] in the engine's dtype and valid encoder frames per item [B] int64
            (T_enc = ceil(T_feat / subsampling), 8 for Parakeet).
        """
        ...


class TorchEncoder:
    """NeMo's FastConformer encoder module itself, in `dtype` (the precision setting's)."""

    backend = "torch"

    def __init__(self, module: Any, dtype: torch.dtype) -> None:
        self.module, self.dtype = module, dtype

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, frame_lengths = self.module(audio_signal=features.to(self.dtype), length=lengths)
        return frames, frame_lengths


def encode_waveforms(
    preprocessor: Any, encoder: Encoder, waveforms: Sequence[npt.NDArray[np.float32]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad, preprocess and encode B waveforms: the one path from samples to encoder frames, for offline batches and
    streaming windows alike.

    Args:
        preprocessor: NeMo's mel preprocessor (float32).
        encoder: the engine's encoder seam.
        waveforms: B >= 1 float32 16 kHz arrays [T_i], T_i >= 1.
        device: where the batch goes.

    Returns:
        Encoder frames [B, D, T_enc] and their valid lengths [B] int64.

    Raises:
        ValueError: an empty batch or an empty waveform.
    """
    features, lengths = batch_features(preprocessor, waveforms, device)
    return encoder(features, lengths)
