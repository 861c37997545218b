"""What the composition root (server.py) wires: the production factories for a worker's ASR engine, its speaker
diarizer and its live streams' VAD. Importing this module is cheap: torch and NeMo are imported when a factory is
called (on the worker's GPU or VAD thread), so the worker answers /health while they load."""

from __future__ import annotations

from parakeet.core.engine import Diarizer, Engine, VoiceActivityModel
from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning


class ParakeetEngineFactory:
    """The NeMo model named by PARAKEET_MODEL on the claimed GPU (or the CPU): `parakeet.engine.build.build_engine`."""

    def __init__(self, tuning: Tuning | None = None) -> None:
        self.tuning = tuning or Tuning()

    def visible_gpus(self) -> int:
        import torch  # not the engine modules: they import NeMo (~5 s) before the worker can answer /health

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def __call__(self, settings: Settings, gpu_id: int | None) -> Engine:
        import torch

        from parakeet.engine.build import build_engine

        device = torch.device("cpu") if gpu_id is None else torch.device("cuda", gpu_id)
        return build_engine(settings, device, self.tuning)


class SortformerDiarizerFactory:
    """The Sortformer named by PARAKEET_DIARIZATION_MODEL beside the ASR model, on the same device and in the same
    precision (`parakeet.engine.diarizer.build_diarizer`); None without the setting."""

    def __call__(self, settings: Settings, gpu_id: int | None) -> Diarizer | None:
        if not settings.diarization_model:
            return None
        import torch

        from parakeet.engine.diarizer import build_diarizer

        device = torch.device("cpu") if gpu_id is None else torch.device("cuda", gpu_id)
        return build_diarizer(settings.diarization_model, device, settings.precision)


class SileroVadFactory:
    """Silero VAD on the CPU for live streams (`parakeet.engine.vad.SileroVad`; its weights ship in its wheel)."""

    def __call__(self) -> VoiceActivityModel | None:
        from parakeet.engine.vad import SileroVad

        return SileroVad()
