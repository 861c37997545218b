"""Settings (parakeet/core/settings.py) and the internal constants (parakeet/core/tuning.py): the environment is
validated once, at start-up, with one message naming every bad or unknown PARAKEET_* variable (and the closest
valid name); every setting is in the README's table and the table is no longer than the cap; the modules take their
defaults from the settings alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parakeet.core.errors import InvalidSettings
from parakeet.core.settings import (
    Settings,
    decoder_pool_size,
    host_workers,
    load_settings,
    unknown_variables,
    variable_names,
)
from parakeet.core.tuning import Tuning
from parakeet.pipeline.batch_policy import BatcherConfig
from parakeet.pipeline.stream_config import PRESETS_MS, StreamConfig

from helpers import ROOT

MAX_USER_FACING_VARIABLES = 32  # issue 28: what a user sets; internal constants are in parakeet/core/tuning.py
# ... plus what the issues after it add for new engine backends and streaming models, by name.
ADDED_AFTER_ISSUE_28 = {"PARAKEET_ENCODER_BACKEND"}  # issue 29


def test_settings_defaults_load_and_feed_the_batcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAKEET_MAX_BATCH_SIZE", "7")
    config = BatcherConfig.from_settings(load_settings(), Tuning())
    assert config.max_batch_size == 7 and config.max_wait_ms == 5.0 and config.max_queue_requests == 128
    assert config.max_queue_audio_s == 4 * 480.0  # four full batches of audio


def test_settings_presets_set_the_stream_windows() -> None:
    for preset, (chunk, right, left) in PRESETS_MS.items():
        config = StreamConfig.from_settings(Settings(stream_preset=preset), Tuning())  # type: ignore[arg-type]
        assert (config.chunk_ms, config.right_context_ms, config.left_context_ms) == (chunk, right, left)


def test_settings_out_of_range_value_names_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAKEET_MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("PARAKEET_PRECISION", "fp8")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert "PARAKEET_MAX_BATCH_SIZE: Input should be greater than or equal to 1 (got '0')" in info.value.message
    assert "PARAKEET_PRECISION: Input should be 'auto', 'fp32', 'bf16' or 'fp16' (got 'fp8')" in info.value.message


def test_settings_a_malformed_webhook_secret_is_one_line_naming_it_without_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked when the settings load (by the signer the jobs use), not later in the lifespan; the value is never
    printed."""
    monkeypatch.setenv("PARAKEET_JOBS_WEBHOOK_SECRET", "whsec_not-base64!")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert info.value.message.startswith(
        "invalid settings: PARAKEET_JOBS_WEBHOOK_SECRET: not a Standard Webhooks secret (whsec_ + base64)"
    )
    assert "not-base64" not in info.value.message and "\n" not in info.value.message
    monkeypatch.setenv("PARAKEET_JOBS_WEBHOOK_SECRET", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    assert load_settings().jobs_webhook_secret is not None


def test_settings_unknown_variable_names_the_closest_valid_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAKEET_MAX_BACH_SIZE", "16")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert info.value.message == (
        "invalid settings: unknown setting PARAKEET_MAX_BACH_SIZE (did you mean PARAKEET_MAX_BATCH_SIZE?)"
    )
    clauses = unknown_variables({"PARAKEET_STREAM_CHUNK_MS": "240", "PARAKEET_ZZZ": "1", "OTHER": "x"})
    assert clauses[0] == "unknown setting PARAKEET_STREAM_CHUNK_MS (did you mean PARAKEET_STREAM_MAX_STREAMS?)"
    assert clauses[1] == "unknown setting PARAKEET_ZZZ (README 'Settings' lists the valid names)"
    assert len(clauses) == 2
    retired = unknown_variables({"PARAKEET_PORT": "9000", "PARAKEET_WORKERS": "2"})
    assert retired == [
        "unknown setting PARAKEET_PORT (no longer a setting: the port is uvicorn's own option: scripts/serve.sh "
        "--port 9000)",
        "unknown setting PARAKEET_WORKERS (no longer a setting: uvicorn's own WEB_CONCURRENCY (scripts/serve.sh "
        "exports it; or --workers))",
    ]


def test_settings_command_prints_values_or_the_problem() -> None:
    cmd = [sys.executable, "-m", "parakeet.core.settings"]
    good = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"PARAKEET_MAX_WAIT_MS": "2"})
    assert good.returncode == 0 and "PARAKEET_MAX_WAIT_MS=2.0" in good.stdout
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"PARAKEET_WARMUP": "false"})
    assert bad.returncode == 2
    assert bad.stderr.startswith("invalid settings: unknown setting PARAKEET_WARMUP")


def test_settings_tuning_refuses_a_search_window_past_the_chunk() -> None:
    with pytest.raises(ValueError, match="must be positive and less than long_audio_chunk_s"):
        Tuning(long_audio_chunk_s=6, long_audio_search_s=6)


def test_settings_every_variable_is_in_the_readme_table_and_there_are_at_most_32() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Settings") : readme.index("## How it works")]
    rows = [line for line in table.splitlines() if line.startswith("| `PARAKEET_")]
    listed = [row.split("`")[1] for row in rows]
    assert sorted(listed) == sorted(variable_names()), "README 'Settings' and Settings differ"
    assert set(listed) >= ADDED_AFTER_ISSUE_28
    assert len(set(listed) - ADDED_AFTER_ISSUE_28) <= MAX_USER_FACING_VARIABLES, len(listed)


def test_settings_cuda_graphs_is_auto_by_default_and_takes_the_usual_boolean_spellings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().cuda_graphs == "auto"
    for raw, word in [("true", "true"), ("1", "true"), ("ON", "true"), ("false", "false"), ("0", "false")]:
        monkeypatch.setenv("PARAKEET_CUDA_GRAPHS", raw)
        assert load_settings().cuda_graphs == word
    assert Settings(cuda_graphs=True).cuda_graphs == "true"  # type: ignore[arg-type]
    monkeypatch.setenv("PARAKEET_CUDA_GRAPHS", "sometimes")
    with pytest.raises(InvalidSettings) as info:
        load_settings()
    assert "PARAKEET_CUDA_GRAPHS: Input should be 'auto', 'true' or 'false' (got 'sometimes')" in info.value.message


def test_settings_decoder_pool_follows_the_cores_per_worker_unless_set() -> None:
    cases = [(2, None, 2), (16, "2", 7), (64, "8", 7), (64, None, 8), (8, "8", 2), (4, None, 3), (4, "x", 3)]
    for cores, concurrency, expected in cases:
        environ = {"WEB_CONCURRENCY": concurrency} if concurrency is not None else {}
        assert decoder_pool_size(None, cores, host_workers(environ)) == expected, (cores, concurrency)
    assert decoder_pool_size(5, 2, 8) == 5  # an explicit value (Tuning.decode_workers) wins
