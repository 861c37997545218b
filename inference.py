"""The model layer's public face: NeMo's Parakeet-TDT pipeline on one device, from `parakeet.engine`.

preprocessor (log-mel features) -> the encoder seam -> TDT greedy batched decoding, run by hand in eval mode
(docs/nemo.md; never `model.transcribe()`). The code lives in the `parakeet.engine` package, one job per module
(README "How it works"); this module keeps the design's names importable: `from inference import build_engine`.
"""

from __future__ import annotations

from parakeet.engine.asr import ParakeetEngine
from parakeet.engine.build import build_engine
from parakeet.engine.cuda_graphs import choose_cuda_graphs, cuda_graphs_self_check
from parakeet.engine.device import resolve_dtype
from parakeet.engine.diarizer import SortformerDiarizer, build_diarizer
from parakeet.engine.encoder import Encoder, TorchEncoder
from parakeet.engine.features import mel_features
from parakeet.engine.hypotheses import token_table
from parakeet.engine.loading import load_asr_model, load_diarization_model
from parakeet.engine.vad import SileroVad

__all__ = [
    "Encoder",
    "ParakeetEngine",
    "SileroVad",
    "SortformerDiarizer",
    "TorchEncoder",
    "build_diarizer",
    "build_engine",
    "choose_cuda_graphs",
    "cuda_graphs_self_check",
    "load_asr_model",
    "load_diarization_model",
    "mel_features",
    "resolve_dtype",
    "token_table",
]
