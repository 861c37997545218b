"""Benchmark: what key-phrase boosting adds to a batch, at 10, 100 and 1,000 phrases, first request and cached.

The engine alone (no HTTP) transcribes one batch of `--batch` clips of `--clip-s` seconds (espeak-ng digits with
pauses) without phrases (the model's own decoding), then with a list of N random phrases on every item: the first
batch with a new list (it compiles the boosting tree) and the median of `--repeats` batches with the same list (the
tree cached), each run right after a batch without phrases (the baseline of its row: the machine's drift hits both).
`--weight 0.001` measures the cost without the effect (the same text; a decoder that emits other tokens does other
work). A timing, never an assertion.

    .venv/bin/python -m bench keywords --model models/digits_tdt.nemo
    .venv/bin/python -m bench keywords --model models/parakeet_arch_random.nemo --batch 4 --clip-s 10 \
        --repeats 5 --weight 0.001
    (on a GPU: --device cuda --precision bf16; bench/gpu.sh runs it)
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clip-s", type=float, default=15.0)
    p.add_argument("--phrases", default="10,100,1000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA graphs as PARAKEET_CUDA_GRAPHS=auto decides)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--weight", type=float, default=1.0, help="the lists' weight (0.001: cost without effect)")
    p.add_argument("--out", type=Path)
    return p.parse_args()


def main() -> int:
    args = parse_args()

    import torch

    from bench._common import load_engine
    from bench.engine import clips
    from parakeet.core.keywords import KeyPhrases

    engine = load_engine(args.model, args.device, precision=args.precision, threads=args.threads)
    waves = clips(args.batch, args.clip_s, 0)
    flags = [False] * len(waves)

    texts: list[str] = []

    def batch_ms(lists: list[KeyPhrases | None] | None) -> float:
        t0 = time.perf_counter()
        texts[:] = [t.text for t in engine.transcribe(waves, flags, None, lists).transcripts]
        return (time.perf_counter() - t0) * 1000

    batch_ms(None)  # warm-up
    none = statistics.median(batch_ms(None) for _ in range(args.repeats))
    plain = list(texts)
    rng = random.Random(0)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = [{"phrases": 0, "first_ms": none, "cached_ms": none, "added_cached": 0.0}]
    print(f"{args.model} on {args.device} ({args.precision}, CUDA graphs {engine.cuda_graphs}), batch {args.batch} x "
          f"{args.clip_s:g} s, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"weight {args.weight:g}; 'same text': items whose boosted text equals their unboosted one (a decoder that")
    print("emits other tokens does other work: with a tiny weight the boosting runs but changes nothing)")
    print("'added': the median cached batch against the median batch without phrases run between them")
    print("| phrases | first batch ms (compiles) | cached batch ms | without phrases, ms | added, cached | same text |")
    print("|---|---|---|---|---|---|")
    print(f"| none (the model's own decoding) | {none:.0f} | {none:.0f} | {none:.0f} | - | - |")
    for n in (int(x) for x in args.phrases.split(",")):
        phrases = tuple(dict.fromkeys(" ".join(rng.choices(words, k=rng.randint(2, 4))) for _ in range(n * 3)))[:n]
        lists: list[KeyPhrases | None] = [KeyPhrases(phrases, args.weight)] * len(waves)
        first = batch_ms(lists)
        same = sum(a == b for a, b in zip(texts, plain, strict=True))
        pairs = [(batch_ms(None), batch_ms(lists)) for _ in range(args.repeats)]  # interleaved: drift hits both
        base, cached = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        row = {"phrases": len(phrases), "first_ms": first, "cached_ms": cached, "plain_ms": base,
               "added_cached": cached / base - 1, "same_text": same}  # fmt: skip
        rows.append(row)
        print(f"| {len(phrases)} | {first:.0f} | {cached:.0f} | {base:.0f} | {row['added_cached']:+.1%} | "
              f"{same}/{len(waves)} |", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
