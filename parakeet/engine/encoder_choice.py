"""`PARAKEET_ENCODER_BACKEND`: which implementation runs the encoder seam, decided at start-up (issue 29).

auto: ONNX Runtime on a CPU worker, torch on a GPU (ONNX Runtime's CUDA and TensorRT providers are not measured on
a GPU here yet: README "Settings"). ONNX Runtime serves only when NeMo's exporter gave a cache entry
(`parakeet.engine.onnx_encoder.cached_export`) and the self-check below finds it equal; otherwise the torch encoder
stays, with one WARNING saying why. Once ONNX Runtime serves, the torch encoder's weights are freed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.settings import Settings
from parakeet.engine.asr import ParakeetEngine
from parakeet.engine.encoder import Encoder, TorchEncoder
from parakeet.engine.features import batch_features

log = logging.getLogger("parakeet.engine")

# The probe: seeded noise of these lengths (s), a padded batch; frames may differ from torch's by this much relative
# to their largest magnitude (float32 export: measured 3e-6 absolute on the digits model, 4e-6 on the full-size
# architecture: issue 29), and the decoded tokens and word timestamps must be equal.
PROBE_SECONDS = (1.3, 2.7, 4.1)
PROBE_SEED = 29
FRAME_TOLERANCE = 1e-3


def model_file(name_or_path: str) -> Path | None:
    """The .nemo file the model was loaded from: the path itself, or the Hugging Face cache's copy of a hub id
    (`<repo>/<name>.nemo`, as NeMo's `from_pretrained` fetches it); None when there is none to key the cache."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    try:
        from huggingface_hub import hf_hub_download

        found = hf_hub_download(name_or_path, f"{name_or_path.rsplit('/', 1)[-1]}.nemo", local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means: no file to key the cache by
        return None
    return Path(found)


def encoder_self_check(engine: ParakeetEngine, candidate: Encoder) -> tuple[str | None, str]:
    """The probe through the torch encoder and `candidate`: (problem or None, what was compared)."""
    rng = np.random.default_rng(PROBE_SEED)
    waves = [(0.05 * rng.standard_normal(int(s * SAMPLE_RATE_HZ))).astype(np.float32) for s in PROBE_SECONDS]
    reference = TorchEncoder(engine.model.encoder, engine.dtype)
    with torch.inference_mode():
        engine.model.eval()
        feats, lens = batch_features(engine.model.preprocessor, waves, engine.device)
        want, want_lens = reference(feats, lens)
        try:
            got, got_lens = candidate(feats, lens)
        except Exception as exc:  # noqa: BLE001 - any failure of the candidate means: keep torch
            return f"it raised {type(exc).__name__}: {exc}", ""
        got = got.to(want.device, want.dtype)
        scale = float(want.abs().max()) or 1.0
        diff = float((want - got).abs().max()) / scale
        summary = f"{len(waves)} items, frames within {diff:.1e} of torch's"
        if want.shape != got.shape or not torch.equal(want_lens.cpu(), got_lens.cpu()):
            return f"frames of shape {tuple(got.shape)} vs torch's {tuple(want.shape)}", summary
        if diff > FRAME_TOLERANCE:
            return f"frames differ by {diff:.2e} of their scale (tolerance {FRAME_TOLERANCE:g})", summary
        flags = [True] * len(waves)
        ref_text, _ = engine.decode_encoded(want, want_lens.to(engine.device), flags)
        new_text, _ = engine.decode_encoded(got.to(engine.device), got_lens.to(engine.device), flags)
    for i, (a, b) in enumerate(zip(ref_text, new_text, strict=True)):
        if (a.text, a.num_tokens, a.words) != (b.text, b.num_tokens, b.words):
            return f"item {i} decodes differently ({a.text!r} vs {b.text!r})", summary
    return None, summary


def choose_encoder(engine: ParakeetEngine, settings: Settings) -> None:
    """Apply PARAKEET_ENCODER_BACKEND to `engine` (see the module docstring); `engine.encoder_reason` says why."""
    mode, cuda = settings.encoder_backend, engine.device.type == "cuda"
    if mode == "torch":
        engine.encoder_reason = "torch: PARAKEET_ENCODER_BACKEND=torch"
        return
    if cuda:
        why = "auto on a CUDA device" if mode == "auto" else "ONNX Runtime's GPU providers are not wired here yet"
        engine.encoder_reason = f"torch: {why}"
        if mode != "auto":
            log.warning("encoder: torch, not ONNX Runtime: %s", why)
        return
    if engine.dtype != torch.float32:
        engine.encoder_reason = f"torch: ONNX Runtime runs the float32 export, this engine is {engine.dtype}"
        log.warning("encoder: %s", engine.encoder_reason)
        return
    problem, summary = _try_onnxruntime(engine, settings)
    if problem is not None:
        engine.encoder_reason = f"torch: ONNX Runtime was not used: {problem}"
        log.warning("encoder: torch, not ONNX Runtime: %s", problem)
    log.info("encoder: %s", engine.encoder_reason)


def _try_onnxruntime(engine: ParakeetEngine, settings: Settings) -> tuple[str | None, str]:
    from parakeet.engine.onnx_encoder import OnnxEncoder, cached_export

    source = model_file(settings.model)
    if source is None:
        return f"no local .nemo file for {settings.model} to key the export cache by", ""
    try:
        path = cached_export(engine.model.encoder, source, Path(settings.data_dir) / "onnx")
        candidate = OnnxEncoder(path, torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - an export or load failure means: keep torch
        return f"the export or its cache failed ({type(exc).__name__}: {str(exc)[:300]})", ""
    problem, summary = encoder_self_check(engine, candidate)
    if problem is not None:
        return f"the self-check failed: {problem}", summary
    engine.use_encoder(candidate, f"onnxruntime: the self-check found the same frames and tokens ({summary})")
    return None, summary
