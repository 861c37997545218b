"""Benchmark: the timestamps stage per item, NeMo's code against parakeet.core.timestamps, on the same hypotheses.

Decodes random encoder output of `--clip-s` seconds (the full-size random model emits speech-like token counts:
BENCHMARKS.md "Machine and models") or real espeak-ng speech (`--encoder real`) once per batch, then times, on
those very hypotheses, NeMo's `compute_rnnt_timestamps(hyp, "all")` + `process_timestamp_outputs` (a fresh copy of
each hypothesis per run: NeMo rewrites it in place) and `tdt_timestamps` over the engine's token table, checks that
both give the same words, segments and tokens, and prints ms per item. A timing, never an assertion; the equality
check exits 1 if they differ.

    .venv/bin/python -m bench timestamps --model models/parakeet_arch_random.nemo
    .venv/bin/python -m bench timestamps --model models/digits_tdt.nemo --encoder real
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    p.add_argument("--encoder", default="random", choices=["random", "real"])
    p.add_argument("--clip-s", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=32, help="hypotheses decoded (one batch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    return p.parse_args()


def main() -> int:
    args = parse_args()

    import numpy as np
    import torch

    from inference import build_engine
    from parakeet.core.settings import Settings

    engine = build_engine(Settings(model=args.model, precision="fp32", device="cpu"), torch.device("cpu"))
    frames = int(args.clip_s / (engine.window_stride_s * engine.subsampling_factor))
    if args.encoder == "random":
        d_model = int(engine.model.cfg.encoder.d_model)
        enc = torch.randn(args.batch, d_model, frames, generator=torch.Generator().manual_seed(0))
        lens = torch.full((args.batch,), frames, dtype=torch.int64)
    else:
        from bench.engine import clips

        waves = clips(args.batch, args.clip_s, 900)
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(waves))
            feats, feat_lens = engine.model.preprocessor(input_signal=x, length=torch.full((len(waves),), x.shape[1]))
            enc, lens = engine.model.encoder(audio_signal=feats, length=feat_lens)
    decoding = engine.model.decoding
    with torch.inference_mode():
        hyps: list[Any] = decoding.decode_hypothesis(decoding.decoding(encoder_output=enc, encoded_lengths=lens)[0])
    tokens = statistics.fmean(len(h.y_sequence) for h in hyps)
    times: dict[str, list[float]] = {"nemo": [], "parakeet": []}
    results: dict[str, list[Any]] = {}
    for _ in range(args.repeats):
        for impl in ("nemo", "parakeet"):
            engine.timestamps_impl = impl
            batch = [copy.deepcopy(h) for h in hyps] if impl == "nemo" else hyps
            t0 = time.perf_counter()
            results[impl] = [engine.timestamps_of(decoding, h) for h in batch]
            times[impl].append((time.perf_counter() - t0) * 1000 / len(batch))
    equal = results["nemo"] == results["parakeet"]
    words = statistics.fmean(len(r.words) for r in results["parakeet"])
    row = {
        "model": args.model, "encoder": args.encoder, "clip_s": args.clip_s, "items": len(hyps),
        "tokens_per_item": round(tokens, 1), "words_per_item": round(words, 1),
        "nemo_ms_per_item": round(statistics.median(times["nemo"]), 3),
        "parakeet_ms_per_item": round(statistics.median(times["parakeet"]), 3),
        "parakeet_first_run_ms_per_item": round(times["parakeet"][0], 3), "equal": equal,
    }  # fmt: skip
    row["speedup"] = round(row["nemo_ms_per_item"] / max(row["parakeet_ms_per_item"], 1e-9), 1)
    print(f"{args.model}, {args.clip_s:g} s items ({args.encoder} encoder), {len(hyps)} hypotheses, "
          f"{tokens:.0f} tokens and {words:.0f} words per item, median of {args.repeats} runs")  # fmt: skip
    print("| timestamps | ms per item |\n|---|---|")
    print(f"| NeMo `compute_rnnt_timestamps` + `process_timestamp_outputs` | {row['nemo_ms_per_item']:.3f} |")
    print(f"| `parakeet.core.timestamps.tdt_timestamps` | {row['parakeet_ms_per_item']:.3f} |")
    print(f"| the same, first run (no word decoded yet: every word a cache miss) | "
          f"{row['parakeet_first_run_ms_per_item']:.3f} |")  # fmt: skip
    print(f"same words, segments and tokens: {equal}; speed-up {row['speedup']}x")
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
