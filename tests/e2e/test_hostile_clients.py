"""Hostile clients on the wire, against a real uvicorn worker on loopback (fake engine): slow and stalled uploads
cannot lock others out (uploads in progress have their own cap, separate from the GPU queue) and are cut off with
408; too many uploads at once get 429 before their bodies are read; a declared body over the cap gets 413 before it
is read; a burst of big uploads stays within the memory budget. Bounded in count and time."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import Serve, ServerProcess, child_pids, until, wav_of

HEAD = (
    b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    b"Content-Length: 100000\r\n\r\n"
)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), body


async def open_upload(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(HEAD + b"--b\r\n")
    await writer.drain()
    return reader, writer


# Default queue (128) and upload pool (512); body limits long enough that trickles stay open during the test.
PATIENT = Serve({"FAKE_TUNING": json.dumps({"body_grace_s": 60, "body_idle_timeout_s": 60})})


@pytest.mark.parametrize("server", [PATIENT], indirect=True)
def test_140_trickling_uploads_do_not_lock_out_a_normal_request(server: ServerProcess) -> None:
    """The denial of service of issue 13: 140 connections that send headers and then a byte a second used to take
    all 128 places of the GPU queue. Uploads now wait in their own (larger) pool."""
    url = server.url

    async def main() -> tuple[int, int, dict[str, int]]:
        conns = [await open_upload(url) for _ in range(140)]
        try:
            for _ in range(2):  # keep trickling: one byte per connection per second
                for _, writer in conns:
                    writer.write(b"x")
                await asyncio.sleep(1.0)
            async with httpx.AsyncClient(timeout=30) as client:
                health = await client.get(f"{url}/health")
                normal = await client.post(f"{url}/transcribe", files={"file": ("a.wav", wav_of(3))})
            return health.status_code, normal.status_code, health.json()
        finally:
            for _, writer in conns:
                writer.close()

    health_status, normal_status, health = asyncio.run(main())
    assert (health_status, normal_status) == (200, 200)
    assert health["uploads_in_progress"] == 140 and health["queued_requests"] == 0


# Body limits of 1 s and 500 bytes/s, and 3 uploads in progress at most (the tests below share the server).
STRICT_TUNING = {"body_grace_s": 1, "body_min_rate_bytes_s": 500, "uploads_per_queue_place": 1}
SERVE = Serve(
    {"PARAKEET_MAX_QUEUE_REQUESTS": "3", "FAKE_TUNING": json.dumps({**STRICT_TUNING, "body_idle_timeout_s": 1})}
)


def test_a_stalled_body_gets_408_and_frees_its_place(module_server: ServerProcess) -> None:
    async def main() -> tuple[int, bytes, int]:
        reader, writer = await open_upload(module_server.url)
        status, body = await asyncio.wait_for(read_response(reader), 30)  # the server cuts it off, not the test
        writer.close()
        async with httpx.AsyncClient(timeout=30) as client:
            health = (await client.get(f"{module_server.url}/health")).json()
        return status, body, health["uploads_in_progress"]

    status, body, uploading = asyncio.run(main())
    assert status == 408 and b'"code":"request_timeout"' in body and b"sent nothing for 1 s" in body
    assert uploading == 0


def test_a_body_slower_than_the_minimum_rate_gets_408(module_server: ServerProcess) -> None:
    async def main() -> tuple[int, bytes]:
        reader, writer = await open_upload(module_server.url)
        response = asyncio.ensure_future(read_response(reader))
        for _ in range(100):  # 10 bytes/s, under the 500 bytes/s minimum, never idle for 1 s
            if response.done():
                break
            writer.write(b"y")
            await asyncio.sleep(0.1)
        result = await asyncio.wait_for(response, 30)
        writer.close()
        return result

    status, body = asyncio.run(main())
    assert status == 408 and b"below the minimum of 500 bytes/s" in body


def test_uploads_over_the_cap_get_429_before_their_bodies_are_read(module_server: ServerProcess) -> None:
    async def main() -> tuple[int, bytes]:
        held = [await open_upload(module_server.url) for _ in range(3)]
        await until(lambda: httpx.get(f"{module_server.url}/health").json()["uploads_in_progress"] == 3)
        reader, writer = await open_upload(module_server.url)
        result = await asyncio.wait_for(read_response(reader), 30)
        for _, w in [*held, (reader, writer)]:
            w.close()
        return result

    status, body = asyncio.run(main())
    assert status == 429 and b'"code":"uploads_full"' in body and b"the limit is 3" in body


def test_upload_limits_do_not_touch_a_normal_upload(module_server: ServerProcess, tmp_path: Path) -> None:
    """A 20 s upload under the strict body limits arrives whole: the fake engine saw every sample of it."""
    r = httpx.post(f"{module_server.url}/transcribe", files={"file": ("a.wav", wav_of(9, 20.0))}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == f"9 {20 * 16000}"  # the fake's text: the tag and the samples it was given
    assert body["duration_sec"] == 20.0 and body["chunks"] == 1


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (the worker and its decoder subprocesses), bytes."""
    total = 0
    for p in [pid, *child_pids(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def test_a_declared_body_over_the_cap_is_413_before_the_body(module_server: ServerProcess) -> None:
    """Declared 1 GB and send none of it: the answer comes without the server waiting for the body (uvicorn sends
    `100 Continue` only when the app first reads it, and the cap answers before that)."""
    host, port = module_server.url.removeprefix("http://").split(":")
    # Bounded: a server that waited for the body would never answer, and recv() would time out.
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
        )
        chunks = []
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413 "), reply
    assert "100 Continue" not in reply
    assert "request body of 1000000000 bytes exceeds the upload limit of 536870912 bytes" in reply


# Issue 19's criterion, scaled down ten times: 12 concurrent uploads of a tenth of 200 MB (PCM16 WAV, 10.4 minutes
# each, 40 MB decoded) against a tenth of 1 GiB; the worker's process tree (the worker and its decoders) may grow by
# the budget plus half of it (the criterion's 0.5 GiB of transients at full size).
BURST_BUDGET = 1024**3 // 10
BURST = Serve({"PARAKEET_MAX_INFLIGHT_AUDIO_BYTES": str(BURST_BUDGET), "FAKE_DELAY_S": "0.5",
               "FAKE_TUNING": json.dumps({"decode_workers": 2})})  # fmt: skip


@pytest.mark.parametrize("server", [BURST], indirect=True)
def test_a_burst_of_big_uploads_grows_the_process_tree_by_at_most_the_budget(server: ServerProcess) -> None:
    """The excess gets 429 `memory_full` (before its body is read, or when its header shows its waveform would not
    fit), the admitted ones 200, and the tree grows by no more than 1.5 x the budget: the budget covers what the
    decoder subprocesses hold for each request (its upload and the waveform being produced), not only the worker."""
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    samples = 200_000_000 // 10 // 2
    sf.write(buf, (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    big = buf.getvalue()
    base = tree_rss_bytes(server.proc.pid)
    peak = [base]

    async def main() -> list[int]:
        async def watch() -> None:
            while True:  # sampling the tree's memory every 20 ms while the burst runs
                peak[0] = max(peak[0], tree_rss_bytes(server.proc.pid))
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        async with httpx.AsyncClient(timeout=120) as client:
            replies = await asyncio.gather(
                *(client.post(f"{server.url}/transcribe", files={"file": ("big.wav", big)}) for _ in range(12))
            )
        watcher.cancel()
        return [r.status_code for r in replies]

    statuses = asyncio.run(main())
    health = httpx.get(f"{server.url}/health").json()
    growth = peak[0] - base
    print(f"12 x {len(big) / 1e6:.0f} MB against {BURST_BUDGET / 2**20:.0f} MiB: statuses {sorted(statuses)}; "
          f"tree RSS {base / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB (+{growth / 2**20:.0f} MiB)")  # fmt: skip
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    assert health["status"] == "ok" and health["inflight_audio_bytes"] == 0
    assert growth <= 1.5 * BURST_BUDGET, growth / 2**20
