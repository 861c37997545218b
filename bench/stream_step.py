"""Cost of a streaming step per preset, no server: engine compute per second of streamed audio.

For each preset and step batch size B, B streams in steady state (a full window: left + chunk + right context)
are stepped together with `inference.ParakeetEngine.stream_step` (the server's own step); the script prints ms
per step, compute seconds per second of streamed audio per stream (= step seconds / (B x chunk seconds)), the
projected streams per worker at real time (its inverse, steps alone, no finals), and the encoder amplification
(window / chunk). For reference it also times the offline pass of the same audio. A timing, not an assertion.

    .venv/bin/python -m bench stream_step --model models/parakeet_arch_random.nemo --batch-sizes 1,8
    python3 -m bench stream_step --model models/parakeet_arch_random.nemo --device cuda \\
        --precision bf16 --batch-sizes 1,16,64,256            # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine import clips
from parakeet.core.engine import StepRequest
from parakeet.pipeline.stream_config import PRESETS_MS

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--presets", default="low-latency,balanced,accurate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-clips", type=int, default=16, help="distinct 12 s clips, cycled over the streams")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args()


def main() -> int:
    args = parse_args()

    import torch

    from bench._common import load_engine

    engine = load_engine(args.model, args.device, precision=args.precision, cuda_graphs=args.cuda_graphs,
                         threads=args.torch_threads)  # fmt: skip
    frame = engine.encoder_frame_samples
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    distinct = clips(min(max(sizes), args.n_clips), 12.0, seed=11)
    audio = [distinct[i % len(distinct)] for i in range(max(sizes))]
    engine.warmup()
    rows: list[dict[str, Any]] = []
    print(
        f"{args.model} on {args.device} ({engine.dtype}), torch threads {torch.get_num_threads()}, "
        f"CUDA graphs {'on' if args.cuda_graphs else 'off'}"
    )
    print("preset       | B   | step ms | compute s per audio s per stream | streams at real time | window/chunk")
    for preset in args.presets.split(","):
        chunk_ms, right_ms, left_ms = PRESETS_MS[preset]
        c, r, left = (round(ms / (frame / 16)) for ms in (chunk_ms, right_ms, left_ms))
        for b in sizes:
            # steady state: `left` committed frames behind the chunk, a decoder state from a previous step
            first = engine.stream_step([StepRequest(w[: (left + r) * frame], 0, left, None) for w in audio[:b]])
            requests = [
                StepRequest(w[: (left + c + r) * frame], left, c, res.state, res.tokens)
                for w, res in zip(audio[:b], first.results, strict=True)
            ]
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                engine.stream_step(requests)
                times.append(time.perf_counter() - t0)
            step_s = float(np.median(times))
            per_audio_s = step_s / (b * c * frame / 16000)
            row = {"preset": preset, "batch": b, "step_ms": step_s * 1000, "compute_per_audio_s": per_audio_s,
                   "streams_real_time": 1 / per_audio_s, "window_over_chunk": (left + c + r) / c}  # fmt: skip
            rows.append(row)
            print(f"{preset:12s} | {b:3d} | {step_s * 1000:7.1f} | {per_audio_s:32.3f} | {1 / per_audio_s:20.1f} | "
                  f"{(left + c + r) / c:.1f}")  # fmt: skip
    t0 = time.perf_counter()
    engine.transcribe(audio[: max(sizes)])
    offline_s = time.perf_counter() - t0
    offline = max(sizes) * 12.0 / offline_s
    print(f"offline pass of the same {max(sizes)} x 12 s clips in one batch: RTFx {offline:.1f} "
          f"(compute s per audio s {1 / offline:.3f})")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "device": args.device, "rows": rows,
                                        "offline_rtfx": offline}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
