"""Prometheus metrics: one scrape of a 2-worker server (multiprocess mode, as serve.sh runs it) counts every
request whichever worker served it, parsed with prometheus_client's own parser; a SIGKILLed worker's live
gauges leave the scrape once its replacement starts."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import Serve, ServerProcess, wait_gone, wait_until, wav_of


def scrape(server: ServerProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items()))


MULTIPROCESS = Serve({"FAKE_DELAY_S": "0.02"}, workers=2, multiprocess_metrics=True)


@pytest.mark.parametrize("server", [MULTIPROCESS], indirect=True)
def test_metrics_two_workers_one_scrape_counts_everything(server: ServerProcess) -> None:
    for i in range(12):  # a new connection each: the kernel spreads them over both workers
        r = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(i, 1.5))}, timeout=30)
        assert r.status_code == 200
    bad = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", b"junk" * 50)}, timeout=30)
    assert bad.status_code == 415
    served: dict[int, int] = {}
    for _ in range(200):
        health = httpx.get(f"{server.url}/health", timeout=5).json()
        served[health["worker_pid"]] = health["requests_served"]
        if len(served) == 2:
            break
    pids = set(served)
    assert len(pids) == 2 and sum(served.values()) == 12
    print(f"requests served per worker: {served}")
    m = scrape(server)
    assert value(m, "parakeet_requests_total", route="/transcribe", status="200", code="ok") == 12
    assert value(m, "parakeet_requests_total", route="/transcribe", status="415", code="unsupported_audio") == 1
    assert value(m, "parakeet_request_duration_seconds_count", route="/transcribe") == 13
    assert value(m, "parakeet_audio_processed_seconds_total") == 12 * 1.5
    assert value(m, "parakeet_audio_duration_seconds_count") == 12
    assert value(m, "parakeet_batch_size_count") == value(m, "parakeet_batch_compute_seconds_count") >= 1
    assert value(m, "parakeet_batch_size_sum") == 12
    assert value(m, "parakeet_queue_wait_seconds_count") == 12
    assert value(m, "parakeet_decode_seconds_count") == 12  # decoded uploads (the junk one was refused)
    assert value(m, "parakeet_worker_ready") == 2  # one series per live worker
    assert {lab["pid"] for lab, _ in m["parakeet_worker_ready"]} == {str(p) for p in pids}
    assert value(m, "parakeet_requests_waiting") == 0 and value(m, "parakeet_queue_audio_seconds") == 0
    assert value(m, "parakeet_build_info", model="nvidia/parakeet-tdt-0.6b-v3", device="cpu") == 1
    assert httpx.get(f"{server.url}/v1/metrics", timeout=10).status_code == 200

    # kill -9 one worker: its live series must not outlive it once the replacement has started
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    assert not wait_gone([victim])
    server.wait_ready(workers=2, timeout_s=180)  # uvicorn's supervisor notices the death by polling; a busy CI is slow
    wait_until(lambda: len(ready := _ready_pids(server)) == 2 and str(victim) not in ready,
               what="the replacement's series, without the victim's")  # fmt: skip
    m = scrape(server)
    assert str(victim) not in {lab["pid"] for lab, _ in m["parakeet_worker_ready"]}
    assert value(m, "parakeet_worker_ready") == 2
    assert value(m, "parakeet_requests_total", route="/transcribe", status="200", code="ok") == 12  # kept


def _ready_pids(server: ServerProcess) -> set[str]:
    return {lab["pid"] for lab, v in scrape(server)["parakeet_worker_ready"] if v == 1}


@pytest.mark.parametrize(
    "server",
    [Serve({"FAKE_DELAY_S": "1.0", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_MAX_QUEUE_REQUESTS": "1"})],
    indirect=True,
)
def test_metrics_rejections_are_counted_by_reason(server: ServerProcess) -> None:
    first = threading.Thread(
        target=httpx.post,
        args=(f"{server.url}/transcribe",),
        kwargs={"files": {"file": ("a.wav", wav_of(1))}, "timeout": 30},
    )
    first.start()
    wait_until(lambda: httpx.get(f"{server.url}/health", timeout=5).json()["queued_requests"] == 1,
               what="the first request to hold the only place")  # fmt: skip
    refused = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(2))}, timeout=30)
    first.join()
    assert refused.status_code == 429
    m = scrape(server)
    assert value(m, "parakeet_rejected_total", reason="queue_full") == 1
    assert value(m, "parakeet_requests_total", route="/transcribe", status="429", code="queue_full") == 1
