"""Benchmark: dynamic batching against the one-request-at-a-time design, and served against bare engine.

In one process tree: synthesizes a fixed clip set; runs the same open-loop ramp (loadtest.py) against a
real uvicorn worker with batching on and with PARAKEET_MAX_BATCH_SIZE=1; then loads the model in-process
and measures the bare engine's throughput at batch 1 and at the batched server's mean batch size, on the
same clips. Prints each design's table, the throughput ratio at the p95 SLO, and served/engine. A timing,
never an assertion: numbers hold only for this machine and run.

    .venv/bin/python -m bench batching --model models/digits_tdt.nemo --clips digits \\
        --rates 10,20,40,60,80,120,160,240 --duration-s 10 --slo-p95-ms 200
    .venv/bin/python -m bench batching --model models/parakeet_arch_random.nemo --clips long \\
        --rates 0.2,0.3,0.4,0.5,0.6,0.8 --duration-s 60 --slo-p95-ms 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

import loadtest
import loadtest_report
from tests.support import speech
from tests.support.servers import start_uvicorn

ROOT = Path(__file__).resolve().parent.parent


def make_clips(kind: str, n: int, folder: Path, seed: int) -> list[Path]:
    """`digits`: n single digit utterances (1-5 digits, 1-3 s). `long`: n clips of 10-15 s, digit utterances
    separated by 0.2-0.6 s pauses. Seeded; float32 WAV at 16 kHz."""
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        if kind == "digits":
            wave = speech.random_utterance(seed * 1000 + i, speech.TRAIN_VOICES + speech.HELD_OUT_VOICES).waveform
        else:
            target_s = rng.uniform(10.0, 15.0)
            parts: list[np.ndarray] = []
            while sum(len(p) for p in parts) < target_s * 16000:
                parts.append(speech.random_utterance(rng.randrange(10**9)).waveform)
                parts.append(np.zeros(int(rng.uniform(0.2, 0.6) * 16000), dtype=np.float32))
            wave = np.concatenate(parts)[: int(target_s * 16000)]
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, wave, 16000, subtype="FLOAT")
        paths.append(path)
    return paths


def serve_and_load(
    model: str, max_batch_size: int, clips: list[Path], args: argparse.Namespace, log_path: Path
) -> loadtest_report.RunResult:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    env.update(
        {
            "PARAKEET_MODEL": model,
            "PARAKEET_MAX_BATCH_SIZE": str(max_batch_size),
            "PARAKEET_MAX_WAIT_MS": str(args.max_wait_ms),
            "OMP_NUM_THREADS": str(args.threads),
            "PARAKEET_MAX_QUEUE_REQUESTS": "1024",
        }
    )
    proc, url = start_uvicorn(["server:app"], env, log_path)
    try:
        runner = loadtest.Runner(url, loadtest.load_audio(clips), timeout_s=600, seed=args.seed)
        return asyncio.run(
            loadtest.run_load(
                runner,
                sequential=args.sequential,
                rates=args.rate_list,
                duration_s=args.duration_s,
                arrivals=args.arrivals,
                slo_p95_ms=args.slo_p95_ms,
                max_error_rate=0.01,
                keep_going=False,
            )
        )
    finally:
        proc.terminate()
        proc.wait(60)


def engine_throughput(
    model: str, clips: list[Path], batch_sizes: list[int], args: argparse.Namespace
) -> dict[int, float]:
    """Bare engine, no HTTP: requests per second at each batch size on the same clips (clips cycled in order
    of a seeded shuffle, each size run for at least `--engine-seconds`)."""
    import torch

    from inference import build_engine
    from parakeet.core.settings import Settings

    if args.threads:  # CPU threads: torch's own (the server's workers take OMP_NUM_THREADS)
        torch.set_num_threads(args.threads)
    settings = Settings(model=model, device="cpu", precision="fp32", cuda_graphs=False)
    engine = build_engine(settings, torch.device("cpu"))
    waves = [sf.read(p, dtype="float32")[0] for p in clips]
    random.Random(args.seed).shuffle(waves)
    engine.transcribe(waves[:1])
    out = {}
    for b in batch_sizes:
        done, t0, i = 0, time.perf_counter(), 0
        while time.perf_counter() - t0 < args.engine_seconds or done < 2 * b:
            batch = [waves[(i + k) % len(waves)] for k in range(b)]
            i += b
            engine.transcribe(batch)
            done += b
        out[b] = done / (time.perf_counter() - t0)
        print(f"engine batch {b:3d}: {out[b]:.2f} req/s", flush=True)
    return out


def best_under_slo(result: loadtest_report.RunResult) -> loadtest_report.StageSummary | None:
    ok = [s for s in result.stages if s.stage != "sequential" and not s.breaks]
    return max(ok, key=lambda s: s.achieved_rps) if ok else None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--clips", choices=["digits", "long"], default="digits")
    p.add_argument("--n-clips", type=int, default=32)
    p.add_argument("--rates", default="10,20,40,80")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--arrivals", choices=["constant", "poisson"], default="poisson")
    p.add_argument("--sequential", type=int, default=5)
    p.add_argument("--slo-p95-ms", type=float, default=200.0)
    p.add_argument("--max-batch-size", type=int, default=32, help="the batched design's PARAKEET_MAX_BATCH_SIZE")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (server and engine)")
    p.add_argument("--engine-seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write all results as JSON")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.rate_list = [float(r) for r in args.rates.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clips = make_clips(args.clips, args.n_clips, tmp, args.seed)
        mean_s = np.mean([sf.info(c).duration for c in clips])
        print(f"{len(clips)} {args.clips} clips, mean {mean_s:.1f} s; model {args.model}; {args.threads} threads")
        results: dict[str, Any] = {}
        for name, size in (("batched", args.max_batch_size), ("unbatched", 1)):
            print(f"\n== {name} (PARAKEET_MAX_BATCH_SIZE={size}) ==", flush=True)
            run = serve_and_load(args.model, size, clips, args, tmp / f"{name}.log")
            print(loadtest_report.markdown_table(run.stages))
            print(loadtest_report.verdict(run, args.slo_p95_ms, 0.01), flush=True)
            results[name] = run
        batched_best, unbatched_best = best_under_slo(results["batched"]), best_under_slo(results["unbatched"])
        mean_batch = round(batched_best.mean_batch_size or 1) if batched_best else 1
        print("\n== bare engine (no HTTP, same clips) ==", flush=True)
        engine = engine_throughput(args.model, clips, sorted({1, max(1, mean_batch)}), args)

    print("\n== summary ==")
    for name, best in (("batched", batched_best), ("unbatched", unbatched_best)):
        if best is None:
            print(f"{name}: no stage met p95 <= {args.slo_p95_ms:g} ms")
        else:
            print(
                f"{name}: {best.achieved_rps:.2f} req/s at p95 {best.latency_ms['p95']:.0f} ms "
                f"(offered {best.offered_rps:.2f}, mean batch {best.mean_batch_size or 1:.1f})"
            )
    summary: dict[str, Any] = {"slo_p95_ms": args.slo_p95_ms, "engine_rps": engine}
    if batched_best and unbatched_best:
        ratio = batched_best.achieved_rps / unbatched_best.achieved_rps
        summary["batched_over_unbatched_at_slo"] = ratio
        print(f"batched / unbatched throughput within the SLO: {ratio:.2f}x")
    if batched_best:
        served = batched_best.achieved_rps / engine[max(1, mean_batch)]
        summary["served_over_engine"] = served
        print(f"served (batched, best stage) / bare engine at batch {mean_batch}: {served:.0%}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "summary": summary,
                    "stages": {n: [asdict(s) for s in r.stages] for n, r in results.items()},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
