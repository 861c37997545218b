"""The encoder on ONNX Runtime (issue 29): NeMo's own exporter writes the FastConformer encoder once into a cache,
ONNX Runtime runs it behind the encoder seam (`parakeet.engine.encoder.Encoder`), and a start-up self-check keeps
it only if it gives the torch encoder's frames and the same decoded tokens and timestamps.

The cache: `<PARAKEET_DATA_DIR>/onnx/<key>/encoder.onnx`, `key` a SHA-256 of the model file's bytes and the versions
of torch, NeMo, onnx and ONNX Runtime (a new model or library exports again). An export runs in a folder of its own
and is renamed into place (atomic: a worker killed mid-export leaves no half cache under the key), under an
exclusive `flock` on `<key>.lock` so that workers starting together export once (the others wait, then load it).
NeMo's exporter: `Exportable.export` (nemo/core/classes/exportable.py); a model over 2 GB is written with external
data files beside `encoder.onnx`, which ONNX Runtime loads from the same folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("parakeet.engine")

EXPORTED = "encoder.onnx"


class OnnxEncoder:
    """An ONNX Runtime session of the exported encoder: mel features [B, n_mels, T] float32 and lengths [B] int64 in,
    frames [B, D, T_enc] float32 and lengths out, as torch tensors on the CPU (the engine's device there).

    Args:
        path: the exported `encoder.onnx`.
        threads: ONNX Runtime's intra-op threads (the worker's share of the cores: torch's own count), inter-op 1.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings would fill the worker's log
        # Batches differ in shape every time: no memory pattern to reuse. The CPU arena stays (without it a long
        # file took 2.5x as long), but shrinks after every run, so it does not keep the largest batch's
        # intermediates for the worker's life (a long file's 60 s chunks: +1 GB of RSS otherwise, measured in
        # tests/e2e/test_long_audio_e2e.py). https://onnxruntime.ai/docs/get-started/with-python.html
        options.enable_mem_pattern = False
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {
            self.input_names[0]: features.detach().to("cpu", torch.float32).contiguous().numpy(),
            self.input_names[1]: lengths.detach().to("cpu", torch.int64).numpy(),
        }
        frames, frame_lengths = self.session.run(None, feed, self.run_options)
        return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(frame_lengths.astype(np.int64))


def cache_key(model_file: Path) -> str:
    """SHA-256 of the model file's bytes and the exporting libraries' versions, hex (the cache folder's name)."""
    digest = hashlib.sha256()
    with open(model_file, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    for lib in ("torch", "nemo_toolkit", "onnx", "onnxruntime"):
        digest.update(f"{lib}={version(lib)};".encode())
    return digest.hexdigest()[:32]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_export(encoder_module: Any, model_file: Path, cache_root: Path) -> Path:
    """The exported encoder for `model_file`: loaded from the cache, or exported into it now (see the module
    docstring).

    Raises:
        Exception: whatever NeMo's exporter raises (the caller falls back to torch).
    """
    key = cache_key(model_file)
    final = cache_root / key
    if (final / EXPORTED).is_file():
        return final / EXPORTED
    with _exclusive(cache_root / f"{key}.lock"):
        if (final / EXPORTED).is_file():  # another worker exported it while this one waited
            return final / EXPORTED
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_root))
        try:
            with warnings.catch_warnings():  # the tracer's notes on shapes: the self-check judges the result
                warnings.simplefilter("ignore")
                encoder_module.export(str(work / EXPORTED), check_trace=False)
            for written in work.iterdir():
                with open(written, "rb") as f:
                    os.fsync(f.fileno())
            work.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("exported the encoder to ONNX: %s", final / EXPORTED)
    return final / EXPORTED
