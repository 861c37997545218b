"""Settings (parakeet/core/settings.py): the environment is validated once, at start-up, with one message
naming every bad PARAKEET_* variable and its value; a worker with bad settings stops instead of serving 500s."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parakeet.core.errors import InvalidSettings
from parakeet.core.settings import load_settings
from parakeet.pipeline.batching import BatcherConfig
from parakeet.pipeline.long_audio import plan_chunks

from helpers import ROOT, start_server


def test_settings_defaults_load_and_feed_the_batcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAKEET_MAX_BATCH_SIZE", "7")
    config = BatcherConfig.from_settings(load_settings())
    assert config.max_batch_size == 7 and config.max_wait_ms == 5.0 and config.max_queue_requests == 128


def test_settings_search_window_not_shorter_than_chunk_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAKEET_LONG_AUDIO_SEARCH_S", "60")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert info.value.message == (
        "invalid settings: PARAKEET_LONG_AUDIO_SEARCH_S (60) must be less than PARAKEET_LONG_AUDIO_CHUNK_S (60)"
    )


def test_settings_out_of_range_value_names_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAKEET_MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("PARAKEET_PRECISION", "fp8")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert "PARAKEET_MAX_BATCH_SIZE: Input should be greater than or equal to 1 (got '0')" in info.value.message
    assert "PARAKEET_PRECISION: Input should be 'auto', 'fp32', 'bf16' or 'fp16' (got 'fp8')" in info.value.message


def test_settings_command_prints_values_or_the_problem() -> None:
    cmd = [sys.executable, "-m", "parakeet.core.settings"]
    good = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"PARAKEET_MAX_WAIT_MS": "2"})
    assert good.returncode == 0 and "PARAKEET_MAX_WAIT_MS=2.0" in good.stdout
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"PARAKEET_LONG_AUDIO_CHUNK_S": "3"})
    assert bad.returncode == 2 and bad.stderr.startswith("invalid settings: PARAKEET_LONG_AUDIO_CHUNK_S")


def test_settings_long_audio_planner_refuses_a_search_window_past_the_chunk() -> None:
    with pytest.raises(ValueError, match="less than chunk_s"):
        plan_chunks(np.zeros(16000 * 30, dtype=np.float32), chunk_s=6, context_s=1, search_s=6)


def test_settings_worker_with_bad_settings_stops_with_one_line(tmp_path: Path) -> None:
    """Before: every long upload was a 500 (negative slice). Now the worker says why and exits with
    uvicorn's start-up-failure code, so the supervisor does not respawn it."""
    server = start_server(tmp_path, {"PARAKEET_LONG_AUDIO_SEARCH_S": "70", "PARAKEET_DEVICE": "cpu"})
    try:
        code = server.proc.wait(60)
    finally:
        server.stop()
    log = server.log()
    assert code == 3, log
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, log
    assert critical[0].endswith(
        "invalid settings: PARAKEET_LONG_AUDIO_SEARCH_S (70) must be less than PARAKEET_LONG_AUDIO_CHUNK_S (60)"
    )
    assert "Traceback" not in log


def test_settings_every_knob_is_listed_in_the_readme() -> None:
    from pathlib import Path

    from parakeet.core.settings import Settings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## Settings") : readme.index("## How it works")]
    missing = [name for name in Settings.model_fields if f"`PARAKEET_{name.upper()}`" not in table]
    assert not missing, f"README 'Settings' does not list {missing}"
