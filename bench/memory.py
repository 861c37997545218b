"""How much a burst of big uploads grows a worker's process tree, against its audio memory budget.

Starts one real uvicorn worker with the fake engine (tests/fakes.py: no model, so the tree's growth is the request
audio's), sends N concurrent uploads of a PCM16 WAV of the given size, samples the resident memory of the worker and
its decoder subprocesses every 20 ms, and prints the statuses, the tree's growth and the budget. `--root` runs the
same against another checkout (e.g. an older commit, for a before/after in one run).

    .venv/bin/python -m bench memory                      # issue 19's case: 12 x 200 MB against 1 GiB
    .venv/bin/python -m bench memory --root /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children, bytes (from /proc)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    total = 0
    for p in pids:
        try:
            line = next(x for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS:"))
            total += int(line.split()[1]) * 1024
        except (OSError, StopIteration):
            continue
    return total


def wav_of(nbytes: int) -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal(nbytes // 2)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def start(root: Path, budget: int, decoders: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    env |= {"FAKE_APP": "1", "FAKE_DELAY_S": "0.5", "PARAKEET_MAX_INFLIGHT_AUDIO_BYTES": str(budget),
            "FAKE_TUNING": json.dumps({"decode_workers": decoders, "gpu_lock_dir": str(log.parent / "locks")}),
            "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "fakes:app", "--app-dir", str(root / "tests"), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server not ready: {log.read_text()[-2000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose server to run")
    p.add_argument("--uploads", type=int, default=12)
    p.add_argument("--upload-mb", type=float, default=200.0, help="size of each upload, MB (10^6 bytes)")
    p.add_argument("--budget-mib", type=float, default=1024.0, help="PARAKEET_MAX_INFLIGHT_AUDIO_BYTES, MiB")
    p.add_argument("--decoders", type=int, default=2, help="decoder subprocesses (Tuning.decode_workers)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args()
    budget = int(args.budget_mib * 2**20)
    data = wav_of(int(args.upload_mb * 1e6))
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(args.root.resolve(), budget, args.decoders, Path(tmp) / "server.log")
        try:
            base = tree_rss_bytes(proc.pid)
            peak = [base]
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()

            async def burst() -> list[int]:
                async with httpx.AsyncClient(timeout=600) as client:
                    replies = await asyncio.gather(*(
                        client.post(f"{url}/transcribe", files={"file": ("big.wav", data)}) for _ in range(args.uploads)
                    ))  # fmt: skip
                return [r.status_code for r in replies]

            t0 = time.perf_counter()
            statuses = asyncio.run(burst())
            seconds = time.perf_counter() - t0
            stop.set()
            watcher.join()
        finally:
            proc.terminate()
            proc.wait(60)
    growth = peak[0] - base
    result = {
        "root": str(args.root), "uploads": args.uploads, "upload_bytes": len(data), "budget_bytes": budget,
        "decoders": args.decoders, "statuses": dict(collections.Counter(statuses)), "seconds": round(seconds, 1),
        "tree_rss_base_mib": round(base / 2**20), "tree_rss_peak_mib": round(peak[0] / 2**20),
        "growth_mib": round(growth / 2**20), "growth_over_budget": round(growth / budget, 2),
    }  # fmt: skip
    print(json.dumps(result))
    print(
        f"{args.uploads} x {len(data) / 1e6:.0f} MB against a {budget / 2**30:.2f} GiB budget ({args.decoders} "
        f"decoders): {dict(collections.Counter(statuses))} in {seconds:.1f} s; tree RSS {base / 2**20:.0f} -> "
        f"{peak[0] / 2**20:.0f} MiB, growth {growth / 2**30:.2f} GiB = {growth / budget:.2f} x the budget"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
