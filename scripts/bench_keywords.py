"""Benchmark: what key-phrase boosting adds to a batch, at 10, 100 and 1,000 phrases, first request and cached.

The engine alone (no HTTP) transcribes one batch of `--batch` clips of `--clip-s` seconds (espeak-ng digits with
pauses) without phrases (the model's own decoding), then with a list of N random phrases on every item: the first
batch with a new list (it compiles the boosting tree) and the median of `--repeats` batches with the same list (the
tree cached). A timing, never an assertion.

    .venv/bin/python scripts/bench_keywords.py --model models/digits_tdt.nemo
    .venv/bin/python scripts/bench_keywords.py --model models/parakeet_arch_random.nemo --batch 8 --clip-s 15
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clip-s", type=float, default=15.0)
    p.add_argument("--phrases", default="10,100,1000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import torch
    from bench_engine import clips

    from inference import build_engine
    from parakeet.core.keywords import KeyPhrases
    from parakeet.core.settings import Settings

    engine = build_engine(
        Settings(model=args.model, device="cpu", precision="fp32", torch_threads=args.threads), torch.device("cpu")
    )
    waves = clips(args.batch, args.clip_s, 0)
    flags = [False] * len(waves)

    def batch_ms(lists: list[KeyPhrases | None] | None) -> float:
        t0 = time.perf_counter()
        engine.transcribe(waves, flags, None, lists)
        return (time.perf_counter() - t0) * 1000

    batch_ms(None)  # warm-up
    none = statistics.median(batch_ms(None) for _ in range(args.repeats))
    rng = random.Random(0)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = [{"phrases": 0, "first_ms": none, "cached_ms": none, "added_cached": 0.0}]
    print(f"{args.model}, batch {args.batch} x {args.clip_s:g} s, torch threads {torch.get_num_threads()}")
    print("| phrases | first batch ms (compiles) | cached batch ms | added to the batch, cached |\n|---|---|---|---|")
    print(f"| none (the model's own decoding) | {none:.0f} | {none:.0f} | - |")
    for n in (int(x) for x in args.phrases.split(",")):
        phrases = tuple(dict.fromkeys(" ".join(rng.choices(words, k=rng.randint(2, 4))) for _ in range(n * 3)))[:n]
        lists: list[KeyPhrases | None] = [KeyPhrases(phrases, 1.0)] * len(waves)
        first = batch_ms(lists)
        cached = statistics.median(batch_ms(lists) for _ in range(args.repeats))
        row = {"phrases": len(phrases), "first_ms": first, "cached_ms": cached, "added_cached": cached / none - 1}
        rows.append(row)
        print(f"| {len(phrases)} | {first:.0f} | {cached:.0f} | {row['added_cached']:+.1%} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
