"""Soak test: a mixed open-loop load on one worker for N minutes, watching for leaks and drift.

Traffic (Poisson arrivals at `--rate` requests/s, all to 127.0.0.1): 70 % short spoken-digit clips, 10 % long
files (`--long-s` seconds, chunked by the server past its long-audio threshold when longer), 10 % hostile inputs
(random bytes -> 415, a WAV cut inside its header -> 415/400, an empty file -> 400), 10 % uploads cancelled
half-way (the client closes the socket mid-body). Every `--window-s` it samples the worker's process tree: RSS
(worker + its decoder subprocesses, from /proc), open file descriptors and threads of the worker, and the p95 latency
and status counts of the requests that finished in the window. At the end it prints the table, writes JSON and a
PNG plot, and says whether anything grew after warm-up (the first `--warmup-windows` windows).

    .venv/bin/python -m bench soak --minutes 30 --rate 20 --out bench/results/soak_digits_cpu.json

A measurement, not a test: its numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from tests.support import speech
from tests.support.servers import start_uvicorn

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Window:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1


def wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def sample(worker_pid: int) -> dict[str, float]:
    tree = proc_tree(worker_pid)
    rss_kib = 0
    for p in tree:
        with contextlib.suppress(OSError):
            rss_kib += status_field(p, "VmRSS")
    return {
        "rss_mib": rss_kib / 1024,
        "fds": len(os.listdir(f"/proc/{worker_pid}/fd")),
        "threads": status_field(worker_pid, "Threads"),
        "processes": len(tree),
    }


async def cancelled_upload(url: str, body: bytes) -> None:
    """Send the headers and half the body, then close: the server must drop it and keep nothing."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    boundary = b"soakboundary"
    part = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + body
    full = part + b"\r\n--" + boundary + b"--\r\n"
    writer.write(
        b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary
        + b"\r\nContent-Length: " + str(len(full)).encode() + b"\r\n\r\n" + full[: len(full) // 2]
    )  # fmt: skip
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()


def load_mix(long_s: float) -> tuple[list[bytes], bytes, list[bytes]]:
    """The soak's files: 24 short utterances, one `long_s` file of utterances and pauses, three hostile bodies."""
    shorts = [wav(speech.random_utterance(5_000_000 + i).waveform) for i in range(24)]
    long_parts = [speech.random_utterance(5_100_000 + i).waveform for i in range(20)]
    long_wave = np.concatenate([np.concatenate([w, np.zeros(4000, np.float32)]) for w in long_parts])
    reps = int(np.ceil(long_s * 16000 / len(long_wave)))
    long_file = wav(np.tile(long_wave, reps)[: int(long_s * 16000)])
    return shorts, long_file, [os.urandom(20_000), shorts[0][:30], b""]


async def run(args: argparse.Namespace, url: str, worker_pid: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    shorts, long_file, hostile = load_mix(args.long_s)
    windows: list[Window] = [Window()]
    rows: list[dict[str, Any]] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, kind: str, data: bytes) -> None:
        t0 = time.monotonic()
        try:
            r = await client.post(f"{url}/transcribe", files={"file": ("a.wav", data)})
            key = f"{kind}:{r.status_code}"
            if r.status_code == 200:
                windows[-1].latencies_ms.append((time.monotonic() - t0) * 1000)
        except httpx.HTTPError as exc:
            key = f"{kind}:{type(exc).__name__}"
        windows[-1].count(key)

    async def cancel_one(data: bytes) -> None:
        try:
            await cancelled_upload(url, data)
            windows[-1].count("cancelled:sent")
        except OSError as exc:
            windows[-1].count(f"cancelled:{type(exc).__name__}")

    start = time.monotonic()
    end = start + args.minutes * 60
    next_window = start + args.window_s
    t = start
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=200)) as client:
        while time.monotonic() < end:
            t += rng.expovariate(args.rate)
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            u = rng.random()
            if u < 0.7:
                task = asyncio.ensure_future(one(client, "short", rng.choice(shorts)))
            elif u < 0.8:
                task = asyncio.ensure_future(one(client, "long", long_file))
            elif u < 0.9:
                task = asyncio.ensure_future(one(client, "hostile", rng.choice(hostile)))
            else:
                task = asyncio.ensure_future(cancel_one(rng.choice(shorts + [long_file])))
            pending.add(task)
            task.add_done_callback(pending.discard)
            if time.monotonic() >= next_window:
                w = windows[-1]
                windows.append(Window())
                row = {"t_s": round(time.monotonic() - start), **sample(worker_pid),
                       "p95_ms": float(np.percentile(w.latencies_ms, 95)) if w.latencies_ms else None,
                       "ok": len(w.latencies_ms), "statuses": dict(sorted(w.statuses.items()))}  # fmt: skip
                rows.append(row)
                print(f"{row['t_s']:5d} s  rss {row['rss_mib']:7.1f} MiB  fds {row['fds']:4d}  "
                      f"threads {row['threads']:3d}  procs {row['processes']}  p95 {row['p95_ms'] or 0:7.1f} ms  "
                      f"{row['statuses']}", flush=True)  # fmt: skip
                next_window += args.window_s
        await asyncio.gather(*pending, return_exceptions=True)
    return rows


def verdict(rows: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    after = rows[warmup:] or rows
    first, last = after[: max(1, len(after) // 4)], after[-max(1, len(after) // 4) :]

    def growth(key: str) -> float:
        return float(np.mean([r[key] for r in last]) - np.mean([r[key] for r in first]))

    errors = {k: v for r in rows for k, v in r["statuses"].items() if k.startswith(("short:", "long:"))
              and not k.endswith(":200")}  # fmt: skip
    return {"rss_growth_mib": growth("rss_mib"), "fd_growth": growth("fds"), "thread_growth": growth("threads"),
            "unexpected_statuses": errors}  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    labels = ("worker tree RSS, MiB", "open fds", "threads", "p95 of OK requests, ms")
    for ax, key, label in zip(axes, ("rss_mib", "fds", "threads", "p95_ms"), labels, strict=True):
        ax.plot(t, [r[key] or 0 for r in rows], marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("soak: mixed load on one worker (bench/soak.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second (Poisson)")
    ap.add_argument("--long-s", type=float, default=200.0, help="duration of the long files, s")
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--warmup-windows", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON; the plot goes beside it (.png)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    env.update({"PARAKEET_MODEL": args.model, "OMP_NUM_THREADS": str(args.torch_threads), "HF_HUB_OFFLINE": "1"})
    proc, url = start_uvicorn(["server:app", "--workers", "1"], env, Path("/tmp/soak_server.log"))
    try:
        print(f"soak: {args.minutes:g} min at {args.rate:g} req/s against {url} ({args.model}), worker pid {proc.pid}")
        rows = asyncio.run(run(args, url, proc.pid))
        health = httpx.get(f"{url}/health").json()
    finally:
        proc.terminate()
        proc.wait(60)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "verdict": verdict(rows, args.warmup_windows), "final_health": health}  # fmt: skip
    print(json.dumps(result["verdict"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        plot(rows, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
