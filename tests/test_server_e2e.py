"""End to end on real speech: a real uvicorn server (2 workers, loopback) with the digits model; digit
utterances in every accepted container, rate and channel count; text, fields, parity, and /health."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jiwer
import pytest

from parakeet.pipeline.audio import decode_audio

from helpers import ROOT, ServerProcess, child_pids, free_port, nemo_reference_texts, start_server, wait_gone
from media import ENCODINGS, encode, wav_bytes


def post_file(url: str, data: bytes, filename: str, timeout_s: float = 60.0) -> httpx.Response:
    return httpx.post(f"{url}/transcribe", files={"file": (filename, data)}, timeout=timeout_s)


def test_e2e_digits_in_every_container_rate_and_channel_count(
    digits_server: ServerProcess, digit_utterances: list[Any]
) -> None:
    jobs = []
    for i, utt in enumerate(digit_utterances):
        enc = ENCODINGS[i % len(ENCODINGS)]
        jobs.append((utt, enc, encode(utt.waveform, enc)))
    assert {enc.name for _, enc, _ in jobs} == {e.name for e in ENCODINGS}

    health: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=5.0) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = client.get(f"{digits_server.url}/health")
                health.append((r.status_code, time.perf_counter() - t0))
                time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda j: post_file(digits_server.url, j[2], f"clip.{j[1].ext}"), jobs))
    finally:
        stop.set()
        poller.join()

    refs, hyps = [], []
    for (utt, enc, _), r in zip(jobs, responses, strict=True):
        assert r.status_code == 200, (enc.name, r.text)
        body = r.json()
        assert set(body) >= {"text", "duration_sec", "processing_time_ms", "gpu_id"}
        assert body["gpu_id"] is None  # CPU
        assert body["request_id"] == r.headers["x-request-id"]
        assert body["source_sample_rate_hz"] == enc.sample_rate_hz
        assert body["source_channels"] == enc.channels
        assert abs(body["duration_sec"] - len(utt.waveform) / 16000) < 0.12
        assert body["processing_time_ms"] >= body["compute_ms"] > 0
        refs.append(utt.text)
        hyps.append(body["text"])
    wer = jiwer.wer(refs, hyps)
    print(f"end-to-end WER over {len(refs)} utterances in {len(ENCODINGS)} encodings: {wer:.3%}")
    assert wer <= 0.05, list(zip(refs, hyps, strict=True))
    assert health and all(status == 200 for status, _ in health)
    print(f"/health during load: {len(health)} polls, max {max(t for _, t in health) * 1000:.0f} ms")


def test_e2e_server_text_equals_nemo_transcribe(
    digits_server: ServerProcess, digits_model_path: Path, digit_utterances: list[Any], tmp_path: Path
) -> None:
    """Same text as NeMo's own transcribe() on the same decoded waveform, through HTTP and decoding."""
    files = [encode(u.waveform, ENCODINGS[i]) for i, u in enumerate(digit_utterances[:8])]
    server_texts = [post_file(digits_server.url, f, "x").json()["text"] for f in files]
    waveforms = [decode_audio(f, max_duration_s=60).waveform for f in files]
    assert server_texts == nemo_reference_texts(digits_model_path, waveforms, tmp_path)


def test_e2e_both_workers_serve_and_report_health(digits_server: ServerProcess) -> None:
    pids = set()
    for _ in range(40):
        r = httpx.get(f"{digits_server.url}/health", timeout=5)
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["ready"] is True and body["detail"] is None
        assert body["device"]["type"] == "cpu" and body["gpu_id"] is None
        assert body["model"].endswith("digits_tdt.nemo")
        assert body["uptime_s"] > 0
        pids.add(body["worker_pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2


def test_e2e_uvicorn_parent_never_imports_torch(digits_server: ServerProcess) -> None:
    maps = Path(f"/proc/{digits_server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps
    child_pid = httpx.get(f"{digits_server.url}/health", timeout=5).json()["worker_pid"]
    assert "libtorch" in Path(f"/proc/{child_pid}/maps").read_text()


def test_importing_server_is_cheap_and_side_effect_free(tmp_path: Path) -> None:
    code = (
        "import sys, time; t=time.perf_counter(); import server; "
        "assert 'torch' not in sys.modules and 'nemo' not in sys.modules, 'heavy import'; "
        "print(round(time.perf_counter()-t, 2))"
    )
    env = {**os.environ, "PARAKEET_GPU_LOCK_DIR": str(tmp_path / "locks")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "locks").exists()  # no GPU claimed at import


def test_e2e_not_ready_while_loading_then_ready(tmp_path: Path, digits_model_path: Path) -> None:
    """/health and /transcribe answer 503 + Retry-After while the model loads, then 200."""
    server = start_server(tmp_path, {"PARAKEET_MODEL": str(digits_model_path), "PARAKEET_DEVICE": "cpu"})
    try:
        first = None
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            try:
                first = httpx.get(f"{server.url}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)
        assert first is not None
        assert first.status_code == 503, first.text
        assert first.json()["status"] == "loading" and first.json()["ready"] is False
        assert first.headers["retry-after"] == "10"
        r = post_file(server.url, wav_bytes(digits_wave()), "a.wav")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert r.headers["retry-after"] == "10"
        server.wait_ready()
        assert post_file(server.url, wav_bytes(digits_wave()), "a.wav").status_code == 200
    finally:
        code = server.stop()
    assert code in (0, -15)  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert "Application shutdown complete" in server.log()


def digits_wave() -> Any:
    import speech

    return speech.speak("four two", "en-us", 160)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "the hub is disabled (HF_HUB_OFFLINE=1) and the model is not in the local"),
        ({"HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "3"}, "the Hugging Face hub is unreachable"),
    ],
    ids=["offline", "unreachable"],
)
def test_e2e_worker_stops_with_one_message_when_hub_is_unavailable(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    # "unreachable": a hub endpoint on a closed loopback port (nothing leaves this machine).
    env = {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    server = start_server(tmp_path, {"PARAKEET_MODEL": "nvidia/parakeet-tdt-0.6b-v3", "PARAKEET_DEVICE": "cpu", **env})
    try:
        decoders: list[int] = []  # single-process uvicorn: the worker is server.proc; its decoders start at once,
        deadline = time.monotonic() + 30  # the model load (NeMo import, then the hub) fails seconds later
        while not decoders and server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            decoders = child_pids(server.proc.pid)
        assert server.proc.wait(90) == 3  # uvicorn's STARTUP_FAILURE
    finally:
        server.stop()
    assert decoders and not wait_gone(decoders)  # its decoder subprocesses died with it
    log = server.log()
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, log
    assert "could not load model 'nvidia/parakeet-tdt-0.6b-v3'" in critical[0]
    assert expected in critical[0]
    assert "PARAKEET_MODEL" in critical[0] and "hf download" in critical[0]
    assert "Traceback" not in log


def test_e2e_sigkilled_worker_is_replaced_and_its_decoders_die(digits_server: ServerProcess) -> None:
    """kill -9 one worker: uvicorn respawns it, its decoder subprocesses do not outlive it, service goes on."""
    victim = httpx.get(f"{digits_server.url}/health", timeout=5).json()["worker_pid"]
    decoders = child_pids(victim)
    assert decoders
    os.kill(victim, signal.SIGKILL)
    assert not wait_gone([victim, *decoders])
    digits_server.wait_ready(workers=2)
    pids = {httpx.get(f"{digits_server.url}/health", timeout=5).json()["worker_pid"] for _ in range(20)}
    assert victim not in pids
    r = post_file(digits_server.url, wav_bytes(digits_wave()), "a.wav")
    assert r.status_code == 200 and r.json()["text"] == "four two"


def test_e2e_batched_results_equal_unbatched_text_for_text(
    digits_server: ServerProcess, digits_engine: Any, digit_utterances: list[Any]
) -> None:
    """Concurrent requests get batched by the server; each text equals the engine's single-item text."""
    files = [wav_bytes(u.waveform, 16000, "FLOAT") for u in digit_utterances]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(client.post(f"{digits_server.url}/transcribe", files={"file": ("a.wav", f)}) for f in files)
                )
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    singles = [digits_engine.transcribe([u.waveform]).transcripts[0].text for u in digit_utterances]
    assert [r.json()["text"] for r in responses] == singles
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    print(f"batch sizes seen: {sorted(sizes)}")
    assert max(sizes) > 1
