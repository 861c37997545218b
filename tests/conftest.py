"""Shared fixtures: the project's own test models, synthesized speech, and real uvicorn servers on loopback.

Nothing here downloads anything: the tiny model is built from a config, the digits model is the committed
models/digits_tdt.nemo (rebuilt by scripts/build_test_models.py when missing), speech comes from espeak-ng.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

import speech  # noqa: E402

MODELS = ROOT / "models"
TINY_MODEL = MODELS / "tiny_tdt.nemo"
DIGITS_MODEL = MODELS / "digits_tdt.nemo"
# Test utterances use seeds far from the training corpus (seeds 0..2399 at --seed 0).
TEST_SEED_BASE = 7_000_000


def _build(kind: str, out: Path, *extra: str) -> Path:
    if not out.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "build_test_models.py"), kind, "--out", str(out), *extra],
            check=True,
            cwd=ROOT,
        )
    return out


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return _build("tiny", TINY_MODEL)


@pytest.fixture(scope="session")
def digits_model_path() -> Path:
    return _build("digits", DIGITS_MODEL)


@pytest.fixture(scope="session")
def digit_utterances() -> list[speech.Utterance]:
    """24 seeded digit utterances: 16 in training voices, 8 in held-out voices (different seeds from training)."""
    seen = [speech.random_utterance(TEST_SEED_BASE + i) for i in range(16)]
    unseen = [speech.random_utterance(TEST_SEED_BASE + 100 + i, speech.HELD_OUT_VOICES) for i in range(8)]
    return seen + unseen


@pytest.fixture(scope="session")
def digits_engine(digits_model_path: Path) -> Any:
    import torch

    from inference import build_engine

    return build_engine(
        str(digits_model_path), torch.device("cpu"), precision="fp32", cuda_graphs=False, max_symbols_per_step=10
    )


def nemo_reference_texts(model_path: Path, waveforms: list[np.ndarray], tmp_path: Path) -> list[str]:
    """NeMo's own transcribe() on FILE PATHS of the same waveforms written as float32 WAV (nemo-notes.md:
    transcribe(list_of_arrays) is not a faithful reference), on a separate model instance."""
    import soundfile as sf
    import torch

    from inference import load_asr_model

    paths = []
    for i, w in enumerate(waveforms):
        p = tmp_path / f"ref_{i}.wav"
        sf.write(p, w, 16000, subtype="FLOAT")
        paths.append(str(p))
    model = load_asr_model(str(model_path), torch.device("cpu"))
    model.eval()
    out = model.transcribe(paths, batch_size=4, verbose=False)
    return [h.text if hasattr(h, "text") else str(h) for h in out]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A real `uvicorn server:app` on 127.0.0.1, its output captured to `log_path`."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0, workers: int = 1) -> None:
        """Wait until `workers` distinct worker pids have answered /health with 200."""
        ready_pids: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2.0)
                if r.status_code == 200:
                    ready_pids.add(r.json()["worker_pid"])
                    if len(ready_pids) >= workers:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp_dir: Path, env: dict[str, str], workers: int = 1, fake: bool = False) -> ServerProcess:
    """Start uvicorn with `env` added to a clean PARAKEET_* environment; does not wait for readiness.
    `fake`: serve tests/fakes.py's FakeEngine (FAKE_* variables) instead of a NeMo model."""
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    base_env.update(
        {
            "PARAKEET_GPU_LOCK_DIR": str(tmp_dir / "locks"),
            "PARAKEET_TORCH_THREADS": "1",
            "PARAKEET_DECODE_WORKERS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    base_env.update(env)
    log_path = tmp_dir / f"server-{port}.log"
    if fake:
        base_env["FAKE_APP"] = "1"
    app = ["fakes:app", "--app-dir", str(ROOT / "tests")] if fake else ["server:app"]
    cmd = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--timeout-worker-healthcheck", "60"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=base_env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)


@contextmanager
def running_fake_server(tmp_dir: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """A ready uvicorn worker serving tests/fakes.py's FakeEngine, stopped on exit."""
    server = start_server(tmp_dir, env, fake=True)
    try:
        server.wait_ready(timeout_s=60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def digits_server(tmp_path_factory: pytest.TempPathFactory, digits_model_path: Path) -> Iterator[ServerProcess]:
    """The digits model behind 2 real uvicorn workers; small limits so that limit tests stay fast."""
    server = start_server(
        tmp_path_factory.mktemp("digits_server"),
        {
            "PARAKEET_MODEL": str(digits_model_path),
            "PARAKEET_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024),
            "PARAKEET_MAX_AUDIO_DURATION_S": "60",
        },
        workers=2,
    )
    try:
        server.wait_ready(workers=2)
        yield server
    finally:
        server.stop()


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Wait until none of `pids` is alive; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.1)
    return alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
