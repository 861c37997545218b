"""Shared fixtures of every level: the project's own test models, synthesized speech, the digits engine and Silero
VAD (built once per session), the digits app in-process, and real uvicorn servers on loopback (helpers.py).

Levels, by folder (each test gets the folder's marker): `unit` (a module or two, no app), `app` (the whole app
in-process: httpx's ASGITransport, Starlette's TestClient), `e2e` (real uvicorn processes on loopback, where the
subject is a process, a socket, a signal or HAProxy) and `browser` (the web page in Debian's chromium).
`pytest -m "not e2e and not browser"` is the fast loop. Nothing here downloads anything: the tiny model is built
from a config, the digits model is the committed models/digits_tdt.nemo (rebuilt by tests/support/build_test_models.py
when missing), speech comes from espeak-ng.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Every app a test builds keeps its jobs database in a temporary directory, never the checkout's data/.
from tests.support import speech

from helpers import LiveServer, Serve, ServerProcess, cpu_settings, digits_app, live_digits_server, start_server

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
os.environ.setdefault("PARAKEET_DATA_DIR", tempfile.mkdtemp(prefix="parakeet-test-data-"))

MODELS = ROOT / "models"
TINY_MODEL = MODELS / "tiny_tdt.nemo"
DIGITS_MODEL = MODELS / "digits_tdt.nemo"
TINY_SORTFORMER = MODELS / "tiny_sortformer.nemo"
TWO_SPEAKER_SORTFORMER = MODELS / "two_speaker_sortformer.nemo"
# Test utterances use seeds far from the training corpus (seeds 0..2399 at --seed 0).
TEST_SEED_BASE = 7_000_000
LEVELS = ("unit", "app", "e2e", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        level = item.path.relative_to(TESTS).parts[0]
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))


def _build(kind: str, out: Path, *extra: str) -> Path:
    if not out.exists():
        subprocess.run(
            [sys.executable, "-m", "tests.support.build_test_models", kind, "--out", str(out), *extra],
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
def tiny_sortformer_path() -> Path:
    return _build("tiny_diarizer", TINY_SORTFORMER)


@pytest.fixture(scope="session")
def two_speaker_sortformer_path() -> Path:
    """The committed trained two-speaker diarizer (rebuilt when missing: ~20 minutes on 2 CPU cores)."""
    return _build("diarizer", TWO_SPEAKER_SORTFORMER, "--steps", "1600", "--utterances", "1000")


@pytest.fixture(scope="session")
def digit_utterances() -> list[speech.Utterance]:
    """24 seeded digit utterances: 16 in training voices, 8 in held-out voices (different seeds from training)."""
    seen = [speech.random_utterance(TEST_SEED_BASE + i) for i in range(16)]
    unseen = [speech.random_utterance(TEST_SEED_BASE + 100 + i, speech.HELD_OUT_VOICES) for i in range(8)]
    return seen + unseen


@pytest.fixture(scope="session")
def digits_torch_engine(digits_model_path: Path) -> Any:
    """The digits model on the torch encoder, for the session."""
    import torch

    from inference import build_engine

    return build_engine(cpu_settings(digits_model_path), torch.device("cpu"))


@pytest.fixture(scope="session")
def digits_engine(digits_torch_engine: Any) -> Any:
    """The session's digits engine (torch's; a module that compares with NeMo overrides it to run on both encoder
    backends: helpers.backend_engine)."""
    return digits_torch_engine


@pytest.fixture(scope="session")
def digits_onnx_engine(digits_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The digits model with its encoder on ONNX Runtime (NeMo's export, cached in a temporary data directory),
    kept only if its self-check passed."""
    import torch

    from inference import build_engine

    settings = cpu_settings(digits_model_path, encoder_backend="onnxruntime", data_dir=tmp_path_factory.mktemp("onnx"))
    engine = build_engine(settings, torch.device("cpu"))
    assert engine.encoder.backend == "onnxruntime", engine.encoder_reason
    return engine


@pytest.fixture(scope="session")
def silero_vad() -> Any:
    from inference import SileroVad

    return SileroVad()


@pytest.fixture(scope="session")
def digits_client(digits_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[Any]:
    """The digits model served in-process for the whole session (Starlette's TestClient: the app and its lifespan
    run on a thread of their own), with small limits so that limit tests stay fast: uploads of at most 8 MiB and
    60 s, 8 streams, streams idle for 3 s closed, WebSocket messages of at most 256 KiB, 2 s of stream lag."""
    with digits_app(digits_engine, silero_vad, digits_model_path) as client:
        yield client


@pytest.fixture(scope="session")
def digits_onnx_client(digits_onnx_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[Any]:
    """`digits_client` with the encoder on ONNX Runtime."""
    with digits_app(digits_onnx_engine, silero_vad, digits_model_path) as client:
        yield client


@pytest.fixture(params=["torch", "onnxruntime"])
def backend_client(request: pytest.FixtureRequest) -> Any:
    """`digits_client` on each encoder backend, for the live protocols' tests that compare finals with /transcribe
    (PARAKEET_ENCODER_BACKEND)."""
    return request.getfixturevalue("digits_onnx_client" if request.param == "onnxruntime" else "digits_client")


# --- real servers (e2e and browser) ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits_server(digits_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[LiveServer]:
    """The digits app served by a real uvicorn on a loopback socket, in a thread of this process, sharing the
    session's engine (for browsers, the load tester and the SDK's Realtime client; the same small limits as
    `digits_client`)."""
    with live_digits_server(digits_engine, silero_vad, digits_model_path) as server:
        yield server


def _serve(serve: Serve, tmp_dir: Path, digits_model_path: Path) -> Iterator[ServerProcess]:
    env = dict(serve.env)
    if not serve.fake:
        env.setdefault("PARAKEET_MODEL", str(digits_model_path))
    proc = start_server(tmp_dir, env, workers=serve.workers, fake=serve.fake,
                        healthcheck_timeout_s=serve.healthcheck_timeout_s,
                        multiprocess_metrics=serve.multiprocess_metrics)  # fmt: skip
    try:
        if serve.ready:
            proc.wait_ready(timeout_s=120, workers=serve.workers)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path, digits_model_path: Path) -> Iterator[ServerProcess]:
    """A real uvicorn server for one test, as `Serve` (the indirect parameter) describes it: the fake engine
    (tests/fakes.py) or the digits model, its environment, its workers; ready unless `ready=False`."""
    yield from _serve(request.param, tmp_path, digits_model_path)


@pytest.fixture(scope="module")
def module_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, digits_model_path: Path
) -> Iterator[ServerProcess]:
    """`server`, shared by the tests of a module: the module's `SERVE` describes it."""
    yield from _serve(request.module.SERVE, tmp_path_factory.mktemp("module_server"), digits_model_path)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL for the session (tests/helpers.py throwaway_postgres)."""
    from helpers import throwaway_postgres

    with throwaway_postgres() as url:
        yield url
