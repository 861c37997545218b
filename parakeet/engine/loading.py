"""Loading NeMo checkpoints: a local `.nemo` file or a Hugging Face hub id (or its local cache), failing offline
with one message that names the setting and the ways out (README "The model")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from parakeet.core.errors import ModelLoadError


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

    return load_nemo(ASRModel, name_or_path, device, "PARAKEET_MODEL")


def load_diarization_model(name_or_path: str, device: torch.device) -> Any:
    """Load NeMo's Sortformer diarizer (`SortformerEncLabelModel`) from a local .nemo file or the Hugging Face hub,
    e.g. "nvidia/diar_streaming_sortformer_4spk-v2" (CC-BY-4.0).

    Raises:
        ModelLoadError: as `load_asr_model`, naming PARAKEET_DIARIZATION_MODEL.
    """
    from nemo.collections.asr.models import SortformerEncLabelModel

    return load_nemo(SortformerEncLabelModel, name_or_path, device, "PARAKEET_DIARIZATION_MODEL")


def load_nemo(cls: Any, name_or_path: str, device: torch.device, setting: str) -> Any:
    """`cls.restore_from` for a path, `cls.from_pretrained` for a hub id; `setting` names where it came from.

    Raises:
        ModelLoadError: the file is missing or cannot be restored, or the hub cannot give the model.
    """
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
        raise ModelLoadError(hub_failure_message(name_or_path, exc, setting)) from exc


def hub_failure_message(model: str, exc: BaseException, setting: str = "PARAKEET_MODEL") -> str:
    """One line: why the hub could not give `model` (from the exception chain's type names) and the ways out."""
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
