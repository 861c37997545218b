"""Shared fixtures: the project's own test models, synthesized speech, and a real 2-worker server on loopback
(helpers they use: helpers.py).

Nothing here downloads anything: the tiny model is built from a config, the digits model is the committed
models/digits_tdt.nemo (rebuilt by scripts/build_test_models.py when missing), speech comes from espeak-ng.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

import speech  # noqa: E402
from helpers import ServerProcess, cpu_settings, start_server  # noqa: E402

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

    return build_engine(cpu_settings(digits_model_path), torch.device("cpu"))


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
