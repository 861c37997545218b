"""Live-stream benchmark: how many real-time `/ws` streams one worker holds, and at what latency.

Open loop: every stream sends spoken digits (espeak-ng) as PCM16 in 20 ms frames, each frame at its scheduled
wall-clock moment (never "after the previous one finished"), sends EOS at the end of each utterance and goes
straight on with the next. The number of streams ramps (`--streams 1,2,4,...`), each stage `--stage-s` long,
optionally with a fixed open-loop HTTP load beside it (`--http-rps`: 5 s clips to POST /transcribe).
Method as NVIDIA Riva's `riva_streaming_asr_client --simulate_realtime --num_parallel_requests N`
(https://docs.nvidia.com/nim/riva/asr/latest/performance.html).

Per stage it reports:
- partial lag: wall time since the utterance started minus the utterance audio the partial covers (`audio_s`),
  p50/p95 — the delay a viewer sees; the preset's chunk + right context is its floor;
- first partial: utterance start -> first non-empty partial, p50/p95;
- EOS -> final (client clock) p50/p95/p99, and the server's queue and compute ms of finals;
- finals equal to the offline text of the same utterance (must be 100 %);
- server: mean step batch, step compute p95, largest stream lag and its growth over the stage (backlog),
  streams refused; HTTP p50/p95 and errors when an HTTP load runs beside.
A stage "holds real time" when p95 partial lag <= chunk + right + 0.5 s, the backlog does not grow (< 1 s
between the first and the last third), nothing is refused and no error occurs.

    .venv/bin/python -m bench streams --streams 1,2,4,8,16,32 --stage-s 30 --out bench/results/streams_digits_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import websockets
from tqdm import tqdm

from parakeet.pipeline.stream_config import PRESETS_MS
from tests.support import speech
from tests.support.servers import start_uvicorn

ROOT = Path(__file__).resolve().parent.parent

FRAME_BYTES = 640  # 20 ms of PCM16 at 16 kHz


@dataclass
class StageStats:
    partial_lag_s: list[float] = field(default_factory=list)
    first_partial_s: list[float] = field(default_factory=list)
    eos_to_final_ms: list[float] = field(default_factory=list)
    final_queue_ms: list[float] = field(default_factory=list)
    final_compute_ms: list[float] = field(default_factory=list)
    finals: int = 0
    finals_equal: int = 0
    errors: list[str] = field(default_factory=list)
    refused: int = 0
    http_ms: list[float] = field(default_factory=list)
    http_errors: int = 0
    health: list[dict[str, Any]] = field(default_factory=list)


def pcm16(w: np.ndarray) -> bytes:
    return bytes((np.clip(w, -1, 1) * 32767).astype("<i2").tobytes())


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def _record(m: dict[str, Any], since_start_s: float, pending: list[tuple[float, str]], got_first: list[bool],
            st: StageStats) -> None:  # fmt: skip
    """One server message of a stream into the stage's numbers."""
    now = time.monotonic()
    if m["type"] == "partial":
        st.partial_lag_s.append(since_start_s - m["audio_s"])
        if m["text"] and not got_first[0]:
            got_first[0] = True
            st.first_partial_s.append(since_start_s)
    elif m["type"] == "final":
        eos_at, offline = pending.pop(0)
        st.eos_to_final_ms.append((now - eos_at) * 1000)
        st.final_queue_ms.append(m["queue_ms"])
        st.final_compute_ms.append(m["compute_ms"])
        st.finals += 1
        st.finals_equal += m["text"] == offline
    else:
        if m.get("code") == "too_many_streams":
            st.refused += 1
        st.errors.append(str(m.get("code")))


async def one_stream(url: str, utterances: list[tuple[bytes, str]], offset: int, until: float, st: StageStats) -> None:
    """One open-loop real-time stream until the wall clock passes `until` (after its current utterance)."""
    try:
        ws = await websockets.connect(url, max_size=None)
    except Exception as exc:  # noqa: BLE001
        st.errors.append(f"connect: {exc}")
        return
    pending: list[tuple[float, str]] = []  # (EOS time, offline text) per utterance awaiting its final
    utt_start = [0.0]
    got_first = [False]

    async def receive() -> None:
        async for raw in ws:
            _record(json.loads(raw), time.monotonic() - utt_start[0], pending, got_first, st)

    receiver = asyncio.create_task(receive())
    try:
        i = offset
        while time.monotonic() < until and not receiver.done():
            pcm, offline = utterances[i % len(utterances)]
            i += 1
            t0 = time.monotonic()
            utt_start[0], got_first[0] = t0, False
            for k in range(0, len(pcm), FRAME_BYTES):
                await ws.send(pcm[k : k + FRAME_BYTES])
                await asyncio.sleep(max(0.0, t0 + (k + FRAME_BYTES) / 32000 - time.monotonic()))
            pending.append((time.monotonic(), offline))
            await ws.send(b"__CTRL__:EOS")
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline and not receiver.done():
            await asyncio.sleep(0.02)
        if pending:
            st.errors.append(f"{len(pending)} finals missing")
    except websockets.ConnectionClosed as exc:
        st.errors.append(f"closed {exc.rcvd.code if exc.rcvd else None}")
    finally:
        receiver.cancel()
        await ws.close()


async def http_load(base: str, clip_wav: bytes, rps: float, until: float, st: StageStats) -> None:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> None:
            t0 = time.monotonic()
            try:
                r = await client.post(f"{base}/transcribe", files={"file": ("a.wav", clip_wav, "audio/wav")})
                if r.status_code == 200:
                    st.http_ms.append((time.monotonic() - t0) * 1000)
                else:
                    st.http_errors += 1
            except httpx.HTTPError:
                st.http_errors += 1

        tasks = []
        start, n = time.monotonic(), 0
        while time.monotonic() < until:
            tasks.append(asyncio.create_task(one()))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rps - time.monotonic()))
        await asyncio.gather(*tasks)


async def sample_health(base: str, until: float, st: StageStats) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            r = await client.get(f"{base}/health")
            st.health.append({"t": time.monotonic(), **r.json()})
            await asyncio.sleep(1.0)


async def stage(
    base: str, n: int, stage_s: float, utterances: list[tuple[bytes, str]], rps: float, clip: bytes
) -> StageStats:
    st = StageStats()
    h0 = httpx.get(f"{base}/health").json()
    until = time.monotonic() + stage_s
    ws_url = base.replace("http://", "ws://") + "/ws"
    jobs = [one_stream(ws_url, utterances, 7 * j, until, st) for j in range(n)]
    jobs.append(sample_health(base, until, st))
    if rps > 0:
        jobs.append(http_load(base, clip, rps, until, st))
    await asyncio.gather(*jobs)
    h1 = httpx.get(f"{base}/health").json()
    steps = h1["stream_steps"] - h0["stream_steps"]
    items = (h1["mean_step_batch"] or 0) * min(h1["stream_steps"], 1000) - (h0["mean_step_batch"] or 0) * min(
        h0["stream_steps"], 1000
    )
    exact = steps and h1["stream_steps"] <= 1000  # /health's mean covers the last 1000 steps
    st.health.append({
        "steps": steps,
        "mean_step_batch": items / steps if exact else h1["mean_step_batch"],
        "step_compute_ms_p95": h1["step_compute_ms_p95"],
        "refused": h1["streams_refused"] - h0["streams_refused"],
    })  # fmt: skip
    return st


def summarize(n: int, st: StageStats, chunk_s: float, right_s: float) -> dict[str, Any]:
    samples = [h for h in st.health if "t" in h]
    lags = [h["max_stream_lag_s"] for h in samples]
    third = max(1, len(lags) // 3)
    growth = (statistics.mean(lags[-third:]) - statistics.mean(lags[:third])) if len(lags) >= 3 else 0.0
    final = st.health[-1]
    p95_lag = pct(st.partial_lag_s, 95)
    holds = (
        p95_lag is not None
        and p95_lag <= chunk_s + right_s + 0.5
        and growth < 1.0
        and st.refused == 0
        and not st.errors
        and st.finals > 0
    )
    return {
        "streams": n,
        "partial_lag_p50_s": pct(st.partial_lag_s, 50),
        "partial_lag_p95_s": p95_lag,
        "first_partial_p50_s": pct(st.first_partial_s, 50),
        "first_partial_p95_s": pct(st.first_partial_s, 95),
        "eos_to_final_p50_ms": pct(st.eos_to_final_ms, 50),
        "eos_to_final_p95_ms": pct(st.eos_to_final_ms, 95),
        "eos_to_final_p99_ms": pct(st.eos_to_final_ms, 99),
        "final_queue_p50_ms": pct(st.final_queue_ms, 50),
        "final_compute_p50_ms": pct(st.final_compute_ms, 50),
        "finals": st.finals,
        "finals_equal_offline": st.finals_equal,
        "mean_step_batch": final["mean_step_batch"],
        "step_compute_p95_ms": final["step_compute_ms_p95"],
        "max_stream_lag_s": max(lags) if lags else None,
        "backlog_growth_s": growth,
        "refused": st.refused,
        "errors": st.errors[:5],
        "http_p50_ms": pct(st.http_ms, 50),
        "http_p95_ms": pct(st.http_ms, 95),
        "http_ok": len(st.http_ms),
        "http_errors": st.http_errors,
        "holds_real_time": holds,
    }


def fmt(v: Any, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def describe(r: dict[str, Any], http: bool) -> str:
    """One stage on one line."""
    parts = [
        f"{r['streams']:4d} streams:",
        f"partial lag p50/p95 {fmt(r['partial_lag_p50_s'])}/{fmt(r['partial_lag_p95_s'])} s,",
        f"first partial p50/p95 {fmt(r['first_partial_p50_s'])}/{fmt(r['first_partial_p95_s'])} s,",
        "EOS->final p50/p95/p99 "
        + "/".join(fmt(r[f"eos_to_final_{q}_ms"], ".0f") for q in ("p50", "p95", "p99"))
        + " ms,",
        f"finals == offline {r['finals_equal_offline']}/{r['finals']},",
        f"step batch {fmt(r['mean_step_batch'])}, step p95 {fmt(r['step_compute_p95_ms'], '.1f')} ms,",
        f"max lag {fmt(r['max_stream_lag_s'])} s (growth {fmt(r['backlog_growth_s'])}),",
        f"refused {r['refused']}, errors {r['errors']}",
    ]
    if http:
        parts.append(f"HTTP p50/p95 {fmt(r['http_p50_ms'], '.0f')}/{fmt(r['http_p95_ms'], '.0f')} ms "
                     f"({r['http_errors']} errors)")  # fmt: skip
    parts.append("-> holds real time" if r["holds_real_time"] else "-> does NOT hold real time")
    return " ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    ap.add_argument("--preset", default="balanced", choices=sorted(PRESETS_MS))
    ap.add_argument("--streams", default="1,2,4,8,16", help="comma-separated stream counts, one stage each")
    ap.add_argument("--stage-s", type=float, default=30.0)
    ap.add_argument("--http-rps", type=float, default=0.0, help="open-loop HTTP requests/s beside the streams")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--utterances", type=int, default=24)
    ap.add_argument("--turn-utterances", type=int, default=1, help="digit utterances (0.3 s apart) per EOS turn")
    ap.add_argument("--out", type=Path, default=None, help="write the stage summaries as JSON")
    args = ap.parse_args()

    chunk_ms, right_ms, left_ms = PRESETS_MS[args.preset]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    env.update({
        "PARAKEET_MODEL": args.model,
        "PARAKEET_STREAM_PRESET": args.preset,
        "PARAKEET_STREAM_MAX_STREAMS": "1024",
        "HF_HUB_OFFLINE": "1",
    })  # fmt: skip
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    log_path = Path("/tmp/bench_streams_server.log")
    proc, base = start_uvicorn(["server:app", "--workers", "1"], env, log_path)
    try:
        print(f"server {base} ({args.model}, preset {args.preset}: chunk {chunk_ms:g} ms, right {right_ms:g} ms, "
              f"left {left_ms:g} ms); log {log_path}")  # fmt: skip
        utterances = []
        for i in tqdm(range(args.utterances), desc="synthesizing + offline references"):
            parts = []
            for j in range(args.turn_utterances):  # each followed by 0.3 s of silence
                parts += [speech.random_utterance(9_000_000 + i * 100 + j).waveform, np.zeros(4800, np.float32)]
            pcm = pcm16(np.concatenate(parts))
            buf = io.BytesIO()
            sf.write(buf, np.frombuffer(pcm, "<i2"), 16000, format="WAV", subtype="PCM_16")
            offline = httpx.post(f"{base}/transcribe", files={"file": ("u.wav", buf.getvalue())}, timeout=60).json()[
                "text"
            ]
            utterances.append((pcm, offline))
        clip = io.BytesIO()  # the HTTP load's clip: three utterances back to back
        clip_pcm = b"".join(pcm for pcm, _ in utterances[:3])
        sf.write(clip, np.frombuffer(clip_pcm, "<i2"), 16000, format="WAV", subtype="PCM_16")
        rows = []
        for n in [int(x) for x in args.streams.split(",")]:
            st = asyncio.run(stage(base, n, args.stage_s, utterances, args.http_rps, clip.getvalue()))
            row = summarize(n, st, chunk_ms / 1000, right_ms / 1000)
            rows.append(row)
            print(describe(row, args.http_rps > 0))
        held = [r["streams"] for r in rows if r["holds_real_time"]]
        print(f"streams per worker at real time (largest stage that held): {max(held) if held else 0}")
        if args.out:
            args.out.write_text(json.dumps({"model": args.model, "preset": args.preset, "stage_s": args.stage_s,
                                            "http_rps": args.http_rps, "stages": rows}, indent=1))  # fmt: skip
            print(f"wrote {args.out}")
    finally:
        proc.terminate()
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
