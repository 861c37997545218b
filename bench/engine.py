"""Offline ceiling of the engine, no HTTP: RTFx and requests/s at several batch sizes on fixed clips.

Runs inference.ParakeetEngine (the server's own pipeline) on seeded synthetic speech clips of a fixed
length, for each batch size, and prints a table: batch size, requests/s, RTFx (audio seconds per wall
second), ms per batch, peak device memory. A timing, not an assertion: it holds for this machine and run.

    .venv/bin/python -m bench engine --model models/parakeet_arch_random.nemo --clip-s 15 \\
        --batch-sizes 1,2,4,8 --device cpu
    python3 -m bench engine --model models/parakeet_arch_random.nemo --clip-s 15 \\
        --batch-sizes 1,16,64,128 --device cuda --precision bf16          # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from tests.support import speech

ROOT = Path(__file__).resolve().parent.parent


def clips(n: int, clip_s: float, seed: int) -> list[np.ndarray]:
    """`n` clips of exactly `clip_s` seconds: digit utterances with short pauses, seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts, total = [], 0
        while total < clip_s * 16000:
            w = speech.random_utterance(rng.randrange(10**9)).waveform
            parts += [w, np.zeros(int(rng.uniform(0.2, 0.6) * 16000), dtype=np.float32)]
            total += len(w) + len(parts[-1])
        out.append(np.concatenate(parts)[: int(clip_s * 16000)])
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--timestamps", action="store_true", help="every request asks for word timestamps (default: none)")
    p.add_argument("--clip-s", type=float, default=15.0)
    p.add_argument("--n-clips", type=int, default=16, help="distinct clips, cycled")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--min-seconds", type=float, default=10.0, help="time each batch size at least this long")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder-backends", default="torch", help="comma list, run one after the other: torch,onnxruntime")
    p.add_argument("--data-dir", default="/tmp/parakeet_bench_data", help="the ONNX export cache's PARAKEET_DATA_DIR")
    p.add_argument("--out", type=Path)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    waves = clips(args.n_clips, args.clip_s, args.seed)
    results: dict[str, list[dict[str, object]]] = {}
    texts: dict[str, list[str]] = {}
    for backend in args.encoder_backends.split(","):
        results[backend], texts[backend] = run_backend(args, backend, waves)
    same = len({tuple(t) for t in texts.values()}) == 1
    if len(texts) > 1:
        print(f"same texts on {', '.join(texts)}: {same}")
    if args.out:
        doc = {"args": vars(args) | {"out": str(args.out)}, "rows": results, "same_texts": same}
        args.out.write_text(json.dumps(doc, indent=1))


def run_backend(
    args: argparse.Namespace, backend: str, waves: list[np.ndarray]
) -> tuple[list[dict[str, object]], list[str]]:
    """The table for one encoder backend (PARAKEET_ENCODER_BACKEND), and the texts of the largest batch."""
    import gc

    import torch

    from bench._common import load_engine

    device = torch.device(args.device)
    gc.collect()
    engine = load_engine(args.model, args.device, precision=args.precision, cuda_graphs=args.cuda_graphs,
                         threads=args.threads, encoder_backend=backend, data_dir=args.data_dir)  # fmt: skip
    engine.sync_stages = True  # stage split (features+encoder / decoding / timestamps+records) is device time
    print(
        f"{args.model} on {device} ({engine.dtype}), encoder {engine.encoder.backend}, {args.clip_s:g} s clips, "
        f"torch threads {torch.get_num_threads()}, CUDA graphs {'on' if args.cuda_graphs else 'off'}, "
        f"timestamps {'on' if args.timestamps else 'off'}"
    )
    print(
        "| batch | req/s | RTFx | ms/batch | features+encoder ms | decoding ms | timestamps+records ms "
        "| peak device MiB |\n|---|---|---|---|---|---|---|---|"
    )
    rows, texts = [], []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        batch = [waves[i % len(waves)] for i in range(b)]
        flags = [args.timestamps] * b
        texts = [t.text for t in engine.transcribe(batch, flags).transcripts]  # (also the warm-up at this shape)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        n, t0 = 0, time.perf_counter()
        stages: dict[str, float] = {}
        while n < 3 or time.perf_counter() - t0 < args.min_seconds:
            for k, v in engine.transcribe(batch, flags).stages_ms.items():
                stages[k] = stages.get(k, 0.0) + v
            n += 1
        elapsed = time.perf_counter() - t0
        rps = n * b / elapsed
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        split = {k: v / n for k, v in stages.items()}
        rows.append({"batch": b, "req_per_s": rps, "rtfx": rps * args.clip_s, "ms_per_batch": 1000 * elapsed / n,
                     "peak_mib": peak, "stages_ms": split, "encoder": engine.encoder.backend})  # fmt: skip
        print(
            f"| {b} | {rps:.2f} | {rps * args.clip_s:.1f} | {1000 * elapsed / n:.0f} "
            f"| {split.get('features_encoder', 0):.0f} | {split.get('decoding', 0):.0f} "
            f"| {split.get('timestamps', 0) + split.get('records', 0):.0f} "
            f"| {'-' if peak is None else f'{peak:.0f}'} |",
            flush=True,
        )
    return rows, texts


if __name__ == "__main__":
    main()
