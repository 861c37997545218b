"""Benchmark: served throughput through HTTP per response format and per workers-per-GPU, in one run.

For each k in `--workers-per-gpu` it starts the real server (`uvicorn server:app`, GPUs x k workers, each claiming a
(GPU, slot) through gpu_lock; on a CPU-only machine k workers), then for each format in `--formats` runs the
open-loop load tester (loadtest.py, OpenAI endpoint) through `--rates`, and reports per (k, format): the highest
offered rate whose p95 stayed within `--slo-p95-ms` with under 1% errors (served at the SLO), the first rate that
broke it (the knee), the mean batch size, and the ratios verbose_json / json and k / k=1. Formats: `json` (text
only: no timestamps computed), `verbose_json` (segments, and with `+words` word timestamps too:
`timestamp_granularities[]=word`). A timing, never an assertion.

    .venv/bin/python -m bench served --model models/digits_tdt.nemo --rates 2,4,6,8 --clip-s 15
    .venv/bin/python -m bench served --model /tmp/p.nemo --workers-per-gpu 1,2 --rates 100,200,400,600 \\
        --formats json,verbose_json+words --clips-dir clips/ --out-dir /tmp/served     # on a GPU box
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import loadtest
from loadtest_report import RunResult
from tests.support.servers import start_uvicorn

ROOT = Path(__file__).resolve().parent.parent


def make_clips(out_dir: Path, clip_s: float, count: int) -> list[Path]:
    """`count` WAV clips (16 kHz PCM16 mono) of `clip_s` seconds of espeak-ng digit speech with pauses
    (`bench_engine.clips`, seed 5000; `SPEECH_CACHE` replays a recording where espeak-ng is missing)."""
    import soundfile as sf

    from bench.engine import clips

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, wave in enumerate(clips(count, clip_s, 5000)):
        path = out_dir / f"clip{c:02d}.wav"
        sf.write(path, wave, 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def visible_gpus() -> int:
    """CUDA devices, counted in a throwaway process (as serve.sh does)."""
    code = "import torch; print(torch.cuda.device_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def run_format(url: str, clips: list[Path], fmt: str, args: argparse.Namespace) -> RunResult:
    response_format, _, words = fmt.partition("+")
    runner = loadtest.Runner(
        url, loadtest.load_audio(clips), endpoint="openai", timeout_s=120, seed=args.seed,
        response_format=response_format, word_timestamps=words == "words",
    )  # fmt: skip
    return asyncio.run(
        loadtest.run_load(
            runner,
            sequential=args.sequential,
            rates=args.rate_list,
            duration_s=args.duration_s,
            arrivals="poisson",
            slo_p95_ms=args.slo_p95_ms,
            max_error_rate=0.01,
            keep_going=False,
            show_progress=False,
        )  # fmt: skip
    )


def closed_loop(url: str, clips: list[Path], formats: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """Saturation throughput: `--concurrency` clients each sending the next request when the last is answered, for
    `--duration-s` per round, the formats interleaved round by round (`--repeats` rounds), so that a noisy machine
    slows every format alike. Returns the req/s (answered 200) of each round per format."""
    import aiohttp

    from loadtest_report import RequestRecord

    async def one_round(session: aiohttp.ClientSession, runner: loadtest.Runner) -> float:
        stop_at = runner.now() + args.duration_s
        ok = 0

        async def client() -> None:
            nonlocal ok
            while runner.now() < stop_at:
                audio = runner.rng.choice(runner.files)
                rec = RequestRecord(stage="closed", index=0, file=audio.path.name, scheduled_s=runner.now())
                await runner.send(session, rec, audio)
                ok += rec.ok

        t0 = runner.now()
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        return ok / (runner.now() - t0)

    async def main() -> dict[str, list[float]]:
        runners = {}
        for fmt in formats:
            response_format, _, words = fmt.partition("+")
            runners[fmt] = loadtest.Runner(
                url, loadtest.load_audio(clips), endpoint="openai", timeout_s=120, seed=args.seed,
                response_format=response_format, word_timestamps=words == "words",
            )  # fmt: skip
        out: dict[str, list[float]] = {fmt: [] for fmt in formats}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            for fmt in formats:  # warm-up: each format's first requests
                await one_round_short(session, runners[fmt])
            for _ in range(args.repeats):
                for fmt in formats:
                    out[fmt].append(await one_round(session, runners[fmt]))
        return out

    async def one_round_short(session: aiohttp.ClientSession, runner: loadtest.Runner) -> None:
        for audio in runner.files[:4]:
            await runner.send(session, RequestRecord("warm", 0, audio.path.name, runner.now()), audio)

    return asyncio.run(main())


def summary_row(k: int, fmt: str, result: RunResult) -> dict[str, Any]:
    stable = result.stable_up_to_rps
    ok_stages = [s for s in result.stages if s.stage != "sequential" and not s.breaks]
    best = max(ok_stages, key=lambda s: s.offered_rps, default=None)
    seq = next((s for s in result.stages if s.stage == "sequential"), None)
    return {
        "workers_per_gpu": k, "format": fmt, "served_at_slo_rps": stable,
        "achieved_rps_at_slo": round(best.achieved_rps, 1) if best else None,
        "p95_ms_at_slo": best.latency_ms.get("p95") if best else None,
        "knee_rps": result.breaking_point_rps, "mean_batch_size": best.mean_batch_size if best else None,
        "unloaded_p50_ms": seq.latency_ms.get("p50") if seq else None,
        "stages": [
            {"offered": s.offered_rps, "achieved": round(s.achieved_rps, 1), "p95_ms": s.latency_ms.get("p95"),
             "errors": s.error_rate, "batch": s.mean_batch_size, "breaks": s.breaks}
            for s in result.stages if s.stage != "sequential"
        ],
    }  # fmt: skip


def markdown(rows: list[dict[str, Any]], slo_ms: float) -> str:
    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"| workers per GPU | format | served at p95 <= {slo_ms:g} ms, req/s (achieved) | p95 ms there | knee req/s "
        "| mean batch | unloaded p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers_per_gpu']} | {r['format']} "
            f"| {f(r['served_at_slo_rps'], 'g')} ({f(r['achieved_rps_at_slo'])}) "
            f"| {f(r['p95_ms_at_slo'])} | {f(r['knee_rps'], 'g')} | {f(r['mean_batch_size'])} "
            f"| {f(r['unloaded_p50_ms'])} |"
        )
    base = {(r["workers_per_gpu"], r["format"]): r.get("achieved_rps_at_slo") for r in rows}
    lines.append("")
    for (k, fmt), v in base.items():
        js = base.get((k, "json"))
        if fmt != "json" and js and v:
            lines.append(f"- k = {k}: {fmt} / json served = {v / js:.0%}")
        k1 = base.get((1, fmt))
        if k != 1 and k1 and v:
            lines.append(f"- {fmt}: k = {k} / k = 1 served = {v / k1:.0%}")
    return "\n".join(lines)


def closed_markdown(rows: list[dict[str, Any]], concurrency: int) -> str:
    lines = [
        f"| workers per GPU | format | req/s, closed loop of {concurrency} (median) | rounds |",
        "|---|---|---|---|",
    ]
    for r in rows:
        rounds = ", ".join(f"{x:.1f}" for x in r["closed_loop_rps"])
        lines.append(f"| {r['workers_per_gpu']} | {r['format']} | {r['median_rps']:.1f} | {rounds} |")
    med = {(r["workers_per_gpu"], r["format"]): r["median_rps"] for r in rows}
    lines.append("")
    for (k, fmt), v in med.items():
        if fmt != "json" and med.get((k, "json")):
            lines.append(f"- k = {k}: {fmt} / json = {v / med[(k, 'json')]:.0%}")
        if k != 1 and med.get((1, fmt)):
            lines.append(f"- {fmt}: k = {k} / k = 1 = {v / med[(1, fmt)]:.0%}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    p.add_argument("--workers-per-gpu", default="1", help="comma-separated k values")
    p.add_argument("--formats", default="json,verbose_json+words")
    p.add_argument("--rates", default="2,4,6,8", help="offered req/s, comma-separated (the ramp stops at the knee)")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per rate stage")
    p.add_argument("--sequential", type=int, default=10)
    p.add_argument("--slo-p95-ms", type=float, default=300.0)
    p.add_argument("--clip-s", type=float, default=15.0)
    p.add_argument("--clips", type=int, default=8, help="distinct clips to make")
    p.add_argument("--clips-dir", type=Path, help="use these audio files instead of making clips")
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server (repeatable)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out-dir", type=Path, help="write served.json and served.md here")
    p.add_argument(
        "--closed-loop", action="store_true",
        help="saturation throughput instead of the open-loop ramp: --concurrency clients, formats interleaved",
    )  # fmt: skip
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="--closed-loop rounds per format")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    args.rate_list = [float(r) for r in args.rates.split(",")]
    gpus = visible_gpus()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clips = loadtest.audio_paths(None, args.clips_dir) if args.clips_dir else make_clips(
            tmp / "clips", args.clip_s, args.clips
        )  # fmt: skip
        for k in (int(x) for x in args.workers_per_gpu.split(",")):
            workers = max(gpus, 1) * k
            env = {key: v for key, v in os.environ.items() if not key.startswith("PARAKEET_")}
            env.update({
                "PARAKEET_MODEL": args.model, "PARAKEET_WORKERS_PER_GPU": str(k), "WEB_CONCURRENCY": str(workers),
                "PARAKEET_MAX_QUEUE_REQUESTS": "1024",
                "HF_HUB_OFFLINE": "1",
            })  # fmt: skip
            if gpus == 0:
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
            env.update(dict(kv.split("=", 1) for kv in args.env))
            log_path = tmp / f"server_k{k}.log"
            proc, url = start_uvicorn(["server:app", "--no-access-log"], env, log_path, timeout_s=600, workers=workers)
            try:
                if args.closed_loop:
                    for fmt, rps in closed_loop(url, clips, args.formats.split(","), args).items():
                        med = sorted(rps)[len(rps) // 2]
                        print(f"k={k} {fmt}: closed loop of {args.concurrency}: median {med:.1f} req/s "
                              f"(rounds {', '.join(f'{x:.1f}' for x in rps)})", flush=True)  # fmt: skip
                        rows.append({"workers_per_gpu": k, "format": fmt, "closed_loop_rps": rps, "median_rps": med})
                    continue
                for fmt in args.formats.split(","):
                    row = summary_row(k, fmt, run_format(url, clips, fmt, args))
                    print(f"k={k} {fmt}: served {row['served_at_slo_rps']} req/s at p95 <= {args.slo_p95_ms:g} ms "
                          f"(achieved {row['achieved_rps_at_slo']}), knee {row['knee_rps']}", flush=True)  # fmt: skip
                    rows.append(row)
            finally:
                proc.terminate()
                proc.wait(60)
                if args.out_dir:
                    args.out_dir.mkdir(parents=True, exist_ok=True)
                    (args.out_dir / f"server_k{k}.log").write_text(log_path.read_text(errors="replace")[-20000:])
    table = closed_markdown(rows, args.concurrency) if args.closed_loop else markdown(rows, args.slo_p95_ms)
    print(f"\n{args.model}, {gpus} GPU(s), clips {args.clips_dir or f'{args.clips} x {args.clip_s:g} s'}\n\n{table}")
    if args.out_dir:
        (args.out_dir / "served.json").write_text(
            json.dumps(
                {
                    "gpus": gpus,
                    "args": vars(args) | {"clips_dir": str(args.clips_dir), "out_dir": str(args.out_dir)},
                    "rows": rows,
                },
                indent=1,
                default=str,
            )
        )
        (args.out_dir / "served.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
