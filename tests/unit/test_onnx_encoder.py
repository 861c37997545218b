"""PARAKEET_ENCODER_BACKEND (parakeet/engine/encoder_choice.py, onnx_encoder.py): `auto` serves ONNX Runtime on a
CPU with NeMo's own export cached under PARAKEET_DATA_DIR (a later start loads it), the torch encoder's weights
freed; a candidate whose frames differ from torch's stays unused, with one WARNING naming the difference; the
cache survives a SIGKILL mid-export and two workers starting together export once. The NeMo comparisons on both
backends are the parametrised tests of test_inference, test_timestamps, test_keywords, test_streaming_engine, and
the /ws and Realtime finals (`backend_client`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference import build_engine
from parakeet.engine.onnx_encoder import EXPORTED, OnnxEncoder, cache_key, cached_export

from helpers import ROOT, cpu_settings


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog on the engine's logger itself (build_engine configures the server's logging: it does not propagate)."""
    logger = logging.getLogger("parakeet.engine")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def test_auto_serves_onnxruntime_on_a_cpu_and_a_later_start_loads_the_cache(
    digits_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = cpu_settings(digits_model_path, encoder_backend="auto", data_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="parakeet.engine"):
        engine = build_engine(settings, torch.device("cpu"))
    assert engine.encoder.backend == "onnxruntime" and engine.device_info().encoder_backend == "onnxruntime"
    assert engine.encoder_reason.startswith("onnxruntime: the self-check found the same frames and tokens")
    assert next(engine.model.encoder.parameters()).device.type == "meta"  # one copy of the encoder: ONNX Runtime's
    cached = tmp_path / "onnx" / cache_key(digits_model_path) / EXPORTED
    assert cached.is_file() and any("exported the encoder to ONNX" in r.getMessage() for r in caplog.records)
    mtime = cached.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="parakeet.engine"):
        again = build_engine(settings, torch.device("cpu"))
    assert again.encoder.backend == "onnxruntime" and cached.stat().st_mtime_ns == mtime
    assert not any("exported the encoder" in r.getMessage() for r in caplog.records)  # loaded, not exported
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("parakeet")]


def test_torch_is_kept_with_one_warning_when_the_onnx_frames_differ(
    digits_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = OnnxEncoder.__call__

    def off_by_a_little(self: OnnxEncoder, features: torch.Tensor, lengths: torch.Tensor) -> object:
        frames, frame_lengths = real(self, features, lengths)
        return frames + 0.05 * frames.abs().max(), frame_lengths

    monkeypatch.setattr(OnnxEncoder, "__call__", off_by_a_little)
    settings = cpu_settings(digits_model_path, encoder_backend="onnxruntime", data_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="parakeet.engine"):
        engine = build_engine(settings, torch.device("cpu"))
    assert engine.encoder.backend == "torch" and engine.device_info().encoder_backend == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "parakeet.engine"]
    assert len(warnings) == 1, warnings
    assert "the self-check failed: frames differ by 5.00e-02 of their scale (tolerance 0.001)" in warnings[0]
    assert engine.encoder_reason.startswith("torch: ONNX Runtime was not used: the self-check failed")
    assert next(engine.model.encoder.parameters()).device.type == "cpu"  # the torch encoder still serves


def test_torch_is_kept_with_one_warning_when_the_export_fails(
    digits_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("the exporter does not know this layer")

    monkeypatch.setattr("parakeet.engine.onnx_encoder.cached_export", broken)
    with caplog.at_level(logging.INFO, logger="parakeet.engine"):
        engine = build_engine(cpu_settings(digits_model_path, encoder_backend="auto", data_dir=tmp_path),
                              torch.device("cpu"))  # fmt: skip
    assert engine.encoder.backend == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "parakeet.engine"]
    assert warnings == [
        "encoder: torch, not ONNX Runtime: the export or its cache failed (RuntimeError: the exporter does not "
        "know this layer)"
    ]


# A process that exports through the cache (the real encoder, or one whose export writes half a file and hangs).
EXPORT = """
import logging, sys, time
from collections.abc import Iterator
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from parakeet.engine.onnx_encoder import cached_export
model_file, cache, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if mode == "hang":
    class Hangs:
        def export(self, path, check_trace=False):
            Path(path).write_bytes(b"half an onnx file")
            print("WRITING", flush=True)
            time.sleep(600)
    module = Hangs()
else:
    from nemo.collections.asr.models import ASRModel
    module = ASRModel.restore_from(str(model_file), map_location="cpu").encoder
print("PATH", cached_export(module, model_file, cache), flush=True)
"""


def _exporter(model_file: Path, cache: Path, mode: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", EXPORT, str(model_file), str(cache), mode]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_the_cache_survives_a_sigkill_mid_export_and_two_workers_export_once(
    digits_model_path: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "onnx"
    key = cache_key(digits_model_path)
    hung = _exporter(digits_model_path, cache, "hang")
    assert hung.stdout is not None and hung.stdout.readline().strip() == "WRITING"
    os.kill(hung.pid, signal.SIGKILL)
    hung.wait(30)
    hung.stdout.close()
    assert not (cache / key).exists()  # the half export is in a folder of its own, never under the key
    first, second = (_exporter(digits_model_path, cache, "real") for _ in range(2))  # (the lock is free again)
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    paths = {line.split(" ", 1)[1] for out in outs for line in out.splitlines() if line.startswith("PATH ")}
    assert paths == {str(cache / key / EXPORTED)}
    assert sum(out.count("exported the encoder to ONNX") for out in outs) == 1  # the other waited and loaded it
    encoder = OnnxEncoder(cache / key / EXPORTED, threads=1)  # the cache entry is a whole, loadable model
    frames, lengths = encoder(torch.zeros(1, 80, 120), torch.tensor([120]))
    assert frames.shape[0] == 1 and int(lengths[0]) == frames.shape[-1]
    assert cached_export(object(), digits_model_path, cache) == cache / key / EXPORTED  # a later start: no export
