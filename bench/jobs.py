"""Benchmark: a backlog of small transcription jobs drains while interactive requests are still answered.

Starts the real server (`uvicorn server:app`, one worker, SQLite jobs in a temporary PARAKEET_DATA_DIR). First a
baseline: one interactive `POST /transcribe` of a short clip every `--interval-s` for `--baseline-s`. Then it
submits `--jobs` jobs (`POST /v1/jobs`, the same kind of clip) as fast as it can and, while the workers drain them,
keeps sending the interactive requests at the same rate; it reports the interactive p50/p95 with and without the
backlog, the submit rate, and the drain time and rate (jobs per second until none is queued or running). A timing,
never an assertion (BENCHMARKS.md "Jobs").

    .venv/bin/python -m bench jobs --model models/digits_tdt.nemo --jobs 1000 --out bench/results/jobs_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.servers import start_uvicorn

ROOT = Path(__file__).resolve().parent.parent


def clips(count: int) -> list[bytes]:
    """`count` short WAV clips (espeak-ng digits, held-out voices; 16 kHz PCM16)."""
    import soundfile as sf

    from tests.support import speech

    out = []
    for i in range(count):
        u = speech.random_utterance(9000 + i, speech.HELD_OUT_VOICES)
        buf = io.BytesIO()
        sf.write(buf, u.waveform, 16000, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else (values or [float("nan")])[0]


async def interactive(url: str, wav: bytes, interval_s: float, stop: asyncio.Event) -> list[float]:
    """POST /transcribe every `interval_s` until `stop`; the latencies of the 200s, ms."""
    import httpx

    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> None:
            t0 = time.perf_counter()
            r = await client.post(f"{url}/transcribe", files={"file": ("a.wav", wav)})
            if r.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1000)

        pending = set()
        while not stop.is_set():
            pending.add(asyncio.ensure_future(one()))
            await asyncio.sleep(interval_s)
        await asyncio.gather(*pending)
    return latencies


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())


async def run(url: str, db: Path, wavs: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    stop = asyncio.Event()
    task = asyncio.ensure_future(interactive(url, wavs[0], args.interval_s, stop))
    await asyncio.sleep(args.baseline_s)
    stop.set()
    baseline = await task
    stop = asyncio.Event()
    task = asyncio.ensure_future(interactive(url, wavs[0], args.interval_s, stop))
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(args.jobs):
            r = await client.post(f"{url}/v1/jobs", files={"file": ("a.wav", wavs[i % len(wavs)])})
            assert r.status_code == 202, r.text
    submitted_s = time.perf_counter() - t0
    while True:
        c = counts(db)
        if c.get("queued", 0) + c.get("running", 0) == 0:
            break
        await asyncio.sleep(0.2)
    drain_s = time.perf_counter() - t0
    stop.set()
    during = await task
    return {"jobs": args.jobs, "submit_s": submitted_s, "drain_s": drain_s, "jobs_per_s": args.jobs / drain_s,
            "statuses": counts(db), "baseline_n": len(baseline), "baseline_p50_ms": p(baseline, 50),
            "baseline_p95_ms": p(baseline, 95), "during_n": len(during), "during_p50_ms": p(during, 50),
            "during_p95_ms": p(during, 95)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--interval-s", type=float, default=0.25, help="between two interactive requests")
    ap.add_argument("--baseline-s", type=float, default=15.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    wavs = clips(20)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
        env |= {"PARAKEET_MODEL": args.model, "PARAKEET_DATA_DIR": f"{tmp}/data", "HF_HUB_OFFLINE": "1"}
        proc, url = start_uvicorn(["server:app"], env, Path(tmp) / "server.log")
        try:
            result = asyncio.run(run(url, Path(tmp) / "data" / "jobs.sqlite3", wavs, args))
        finally:
            proc.terminate()
            proc.wait(60)
    print(f"{result['jobs']} jobs: submitted in {result['submit_s']:.1f} s, drained in {result['drain_s']:.1f} s "
          f"({result['jobs_per_s']:.1f} jobs/s), {result['statuses']}")  # fmt: skip
    print(f"interactive POST /transcribe every {args.interval_s} s: p50 / p95 {result['baseline_p50_ms']:.0f} / "
          f"{result['baseline_p95_ms']:.0f} ms alone ({result['baseline_n']}), {result['during_p50_ms']:.0f} / "
          f"{result['during_p95_ms']:.0f} ms while the jobs drain ({result['during_n']})")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
