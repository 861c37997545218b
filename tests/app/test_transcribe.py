"""`POST /transcribe` on real speech, in-process against the digits app: digit utterances in every accepted
container, rate, sample format and channel count (WER <= 5%, the response's fields, /health answering meanwhile);
the same text as NeMo's own `model.transcribe()` through HTTP and decoding; requests the server batched get the text
they get alone. (Two real workers, their processes and their GPU locks: tests/e2e/test_server.py.)"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jiwer
from starlette.testclient import TestClient

from parakeet.pipeline.audio import decode_audio

from helpers import nemo_reference_texts
from media import ENCODINGS, encode, wav_bytes


def post_file(client: TestClient, data: bytes, filename: str) -> Any:
    return client.post("/transcribe", files={"file": (filename, data)})


def test_digits_in_every_container_rate_and_channel_count(
    digits_client: TestClient, digit_utterances: list[Any]
) -> None:
    jobs = []
    for i, utt in enumerate(digit_utterances):
        enc = ENCODINGS[i % len(ENCODINGS)]
        jobs.append((utt, enc, encode(utt.waveform, enc)))
    assert {enc.name for _, enc, _ in jobs} == {e.name for e in ENCODINGS}
    health: list[tuple[int, int]] = []  # (status, requests admitted and not yet answered when it answered)
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            r = digits_client.get("/health")
            body = r.json()
            health.append((r.status_code, body["queued_requests"] + body["uploads_in_progress"]))

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda j: post_file(digits_client, j[2], f"clip.{j[1].ext}"), jobs))
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
    print(f"WER over {len(refs)} utterances in {len(ENCODINGS)} encodings: {wer:.3%}")
    assert wer <= 0.05, list(zip(refs, hyps, strict=True))
    assert health and all(status == 200 for status, _ in health)
    assert any(busy > 0 for _, busy in health), "no /health answer came while requests were in the worker"


def test_text_equals_nemo_transcribe(
    digits_client: TestClient, digits_model_path: Path, digit_utterances: list[Any], tmp_path: Path
) -> None:
    """Same text as NeMo's own transcribe() on the same decoded waveform, through HTTP and decoding."""
    files = [encode(u.waveform, ENCODINGS[i]) for i, u in enumerate(digit_utterances[:8])]
    server_texts = [post_file(digits_client, f, "x").json()["text"] for f in files]
    waveforms = [decode_audio(f, max_duration_s=60).waveform for f in files]
    assert server_texts == nemo_reference_texts(digits_model_path, waveforms, tmp_path)


def test_batched_results_equal_unbatched_text_for_text(
    digits_client: TestClient, digits_engine: Any, digit_utterances: list[Any]
) -> None:
    """Concurrent requests get batched by the server; each text equals the engine's single-item text."""
    files = [wav_bytes(u.waveform, 16000, "FLOAT") for u in digit_utterances]
    with ThreadPoolExecutor(len(files)) as pool:
        responses = list(pool.map(lambda f: post_file(digits_client, f, "a.wav"), files))
    assert all(r.status_code == 200 for r in responses)
    singles = [digits_engine.transcribe([u.waveform]).transcripts[0].text for u in digit_utterances]
    assert [r.json()["text"] for r in responses] == singles
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    print(f"batch sizes seen: {sorted(sizes)}")
    assert max(sizes) > 1


def test_health_and_build_info_say_which_decoder_runs(digits_client: TestClient) -> None:
    device = digits_client.get("/health").json()["device"]
    assert device["type"] == "cpu" and device["cuda_graphs"] is False
    assert device["cuda_graphs_reason"] == "not a CUDA device"
    lines = digits_client.get("/metrics").text.splitlines()
    info = [
        x for x in lines if x.startswith("parakeet_build_info{") and "digits_tdt.nemo" in x and 'encoder="torch"' in x
    ]  # one registry per process (digits_onnx_client's app adds its own line, encoder="onnxruntime")
    assert len(info) == 1 and 'cuda_graphs="off"' in info[0] and 'device="cpu"' in info[0], info
