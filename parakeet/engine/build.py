"""`build_engine`: the ASR engine a worker serves with, from the settings."""

from __future__ import annotations

import logging
import time

import torch

from parakeet.core.logs import configure_logging
from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning
from parakeet.engine.asr import ParakeetEngine
from parakeet.engine.cuda_graphs import choose_cuda_graphs
from parakeet.engine.device import pinned_cuda_device
from parakeet.engine.encoder_choice import choose_encoder
from parakeet.engine.loading import load_asr_model

log = logging.getLogger("parakeet.engine")


def build_engine(settings: Settings, device: torch.device, tuning: Tuning | None = None) -> ParakeetEngine:
    """Load `settings.model` onto `device` and wrap it for serving (`load_asr_model`, `ParakeetEngine`), with the
    torch encoder and NeMo's CUDA-graph decoder as `PARAKEET_CUDA_GRAPHS` and its self-check decide.

    Uses the settings `model`, `precision` and `cuda_graphs` (README, "Settings") and `tuning.max_symbols_per_step`;
    torch's CPU threads are its own (OMP_NUM_THREADS: scripts/serve.sh shares the cores between CPU workers).

    Raises:
        ModelLoadError: the model could not be loaded.
    """
    configure_logging(settings.log_format, settings.log_level)  # again: importing NeMo added its own handler
    device = pinned_cuda_device(device)
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
    choose_encoder(engine, settings)
    choose_cuda_graphs(engine, settings.cuda_graphs, cuda=device.type == "cuda")
    log.info(
        "loaded %s on %s (%s, %.1f M parameters, %s encoder) in %.1f s",
        settings.model,
        device,
        engine.dtype,
        engine.num_parameters / 1e6,
        engine.encoder.backend,
        time.perf_counter() - t0,
    )
    return engine
