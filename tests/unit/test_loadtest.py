"""loadtest.py: the arrival schedule, percentiles, the breaking-point rule and the table, its clear errors, and
non-JSON answers from a stand-in aiohttp server on loopback (the ramp against the real server: tests/e2e)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

import loadtest
from loadtest import RequestRecord, arrival_times, breaks, markdown_table, percentile, summarize

from helpers import free_port


def test_loadtest_constant_arrivals_are_evenly_spaced() -> None:
    times = arrival_times(10, 2.0, "constant", random.Random(0))
    assert len(times) == 20
    np.testing.assert_allclose(np.diff(times), 0.1)
    assert times[0] == 0.0


def test_loadtest_poisson_arrivals_have_the_right_rate() -> None:
    times = arrival_times(50, 100.0, "poisson", random.Random(1))
    assert 5000 - 5 * 71 < len(times) < 5000 + 5 * 71  # mean 5000, sd sqrt(5000)
    gaps = np.diff(times)
    assert abs(gaps.mean() - 0.02) < 0.001 and abs(gaps.std() - 0.02) < 0.002  # exponential: sd == mean
    assert all(0 <= t < 100 for t in times) and times == sorted(times)
    assert times == arrival_times(50, 100.0, "poisson", random.Random(1))  # seeded


@pytest.mark.parametrize(("rate", "duration", "kind"), [(0, 1, "constant"), (1, 0, "poisson"), (1, 1, "burst")])
def test_loadtest_arrivals_reject_bad_arguments(rate: float, duration: float, kind: str) -> None:
    with pytest.raises(ValueError):
        arrival_times(rate, duration, kind, random.Random(0))


def test_loadtest_percentile_matches_numpy() -> None:
    assert percentile(list(range(1, 101)), 50) == pytest.approx(50.5)
    assert percentile([], 95) is None
    data = list(np.random.default_rng(2).lognormal(3, 1, 997))
    for q in (50, 95, 99):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))


def _rec(i: int, latency_ms: float, error: str | None = None, status: int = 200) -> RequestRecord:
    return RequestRecord(
        stage="s", index=i, file="a.wav", scheduled_s=i * 0.1, sent_s=i * 0.1, done_s=i * 0.1 + latency_ms / 1000,
        latency_ms=latency_ms, status=status, error=error, audio_s=None if error else 2.0,
        gpu_id=None if error else str(i % 2), batch_size=None if error else 2,
    )  # fmt: skip


def test_loadtest_summary_counts_errors_and_latency() -> None:
    records = [_rec(i, 100 + i) for i in range(18)] + [_rec(18, 5, "http_429", 429), _rec(19, 30000, "timeout", 0)]
    s = summarize("10 req/s", records, 10.0)
    assert (s.sent, s.ok) == (20, 18)
    assert s.errors_by_status == {"429": 1, "0": 1} and s.errors_by_kind == {"http": 1, "timeout": 1}
    assert s.error_rate == pytest.approx(0.1)
    assert s.latency_ms["p50"] == pytest.approx(108.5)
    assert s.gpu_share == {"0": 0.5, "1": 0.5} and s.mean_batch_size == 2.0
    assert s.achieved_rps == pytest.approx(18 / (1.7 + 0.117))


def test_loadtest_breaking_point_rule() -> None:
    fine = summarize("a", [_rec(i, 100) for i in range(100)], 10)
    slow = summarize("b", [_rec(i, 100 if i < 90 else 900) for i in range(100)], 10)
    failing = summarize("c", [_rec(i, 100, "http_503", 503) if i < 2 else _rec(i, 100) for i in range(100)], 10)
    dead = summarize("d", [_rec(i, 5, "connection", 0) for i in range(10)], 10)
    assert not breaks(fine, slo_p95_ms=500, max_error_rate=0.01)
    assert breaks(slow, slo_p95_ms=500, max_error_rate=0.01)
    assert breaks(failing, slo_p95_ms=500, max_error_rate=0.01)
    assert not breaks(failing, slo_p95_ms=500, max_error_rate=0.05)
    assert breaks(dead, slo_p95_ms=500, max_error_rate=0.5)


def test_loadtest_markdown_table() -> None:
    s = summarize("70 req/s", [_rec(i, 129) for i in range(10)], 70.0)
    s.breaks = True
    table = markdown_table([s]).splitlines()
    assert table[0].startswith("| Stage | Offered req/s | Achieved req/s | OK | Errors | Avg | P50 | P95 | P99 |")
    assert table[2].startswith("| 70 req/s (breaks) | 70.0 |") and "| 129ms | 129ms | 129ms |" in table[2]


def test_loadtest_refuses_an_empty_audio_dir(tmp_path: Path) -> None:
    with pytest.raises(loadtest.LoadTestError, match="holds no audio files"):
        loadtest.audio_paths(None, tmp_path)


def test_loadtest_refuses_a_non_audio_file(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    with pytest.raises(loadtest.LoadTestError, match=r"notes\.wav is not an audio file"):
        loadtest.load_audio(loadtest.audio_paths(None, tmp_path))


def _clip(tmp_path: Path) -> Path:
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 16000)
    return path


def test_loadtest_unreachable_server_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = loadtest.main(["--url", f"http://127.0.0.1:{free_port()}", "--audio", str(_clip(tmp_path)), "--quiet"])
    assert code == 2
    assert "cannot reach the server at http://127.0.0.1:" in capsys.readouterr().err


def test_loadtest_non_json_answers_are_counted_as_such(tmp_path: Path) -> None:
    async def main() -> loadtest.RunResult:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.Response(text="ok"))
        app.router.add_post("/transcribe", lambda r: web.Response(text="<html>proxy error</html>"))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            lt = loadtest.Runner(f"http://127.0.0.1:{port}", loadtest.load_audio([_clip(tmp_path)]))
            return await loadtest.run_load(
                lt, sequential=3, rates=[20], duration_s=0.5, arrivals="constant",
                slo_p95_ms=1000, max_error_rate=0.01, keep_going=False, show_progress=False,
            )  # fmt: skip
        finally:
            await runner.cleanup()

    result = asyncio.run(main())
    assert {r.error for r in result.requests} == {"non_json"}
    assert result.breaking_point_rps == 20 and result.stable_up_to_rps is None


def test_loadtest_plot_draws_a_png(tmp_path: Path) -> None:
    stages = []
    for i, rate in enumerate((10, 30, 50, 70, 80)):
        s = summarize(f"{rate} req/s", [_rec(j, 100 + 40 * i**2 + j) for j in range(50)], float(rate))
        s.breaks = rate == 80
        stages.append(s)
    result = loadtest.RunResult(stages, [], 70, 80)
    path = tmp_path / "run.png"
    loadtest.write_outputs(result, None, path, slo_p95_ms=500)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
