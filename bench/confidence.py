"""Cost of word/token confidence (`confidence=true`, `include[]=logprobs`): the GPU thread's time after the encoder
with and without it, same batches, alternating runs. Prints the median ms of decoding, timestamps and records
(`BatchResult.stages_ms`) and of the whole batch, and checks the texts are identical. A timing, not an assertion.

    .venv/bin/python -m bench confidence --model models/digits_tdt.nemo --batch-sizes 1,8,32
    .venv/bin/python -m bench confidence --model models/parakeet_arch_random.nemo --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.engine import clips

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clip-s", type=float, default=15.0)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from inference import build_engine
    from parakeet.core.settings import Settings

    if args.threads:  # CPU threads: torch's own (the server's workers take OMP_NUM_THREADS)
        torch.set_num_threads(args.threads)
    engine = build_engine(Settings(model=args.model), torch.device(args.device))
    waves = clips(max(int(b) for b in args.batch_sizes.split(",")), args.clip_s, seed=3)
    print(f"{args.model} on {args.device}, {args.clip_s:g} s clips, torch threads {torch.get_num_threads()}")
    print(
        "| batch | after-encoder ms, timestamps only | with confidence | whole batch ms, without / with | same text |"
    )
    print("|---|---|---|---|---|")
    rows = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        batch = waves[:b]
        engine.transcribe(batch, [True] * b, [True] * b)  # build the confidence decoder, warm up
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        texts: dict[bool, list[str]] = {}
        for _ in range(args.repeats):
            for conf in (False, True):
                out = engine.transcribe(batch, [True] * b, [conf] * b)
                after = sum(out.stages_ms[k] for k in ("decoding", "timestamps", "records"))
                runs[conf].append((after, out.compute_ms))
                texts[conf] = [t.text for t in out.transcripts]
        med = {c: (statistics.median(a for a, _ in r), statistics.median(w for _, w in r)) for c, r in runs.items()}
        row = {"batch": b, "after_ms": med[False][0], "after_ms_confidence": med[True][0], "batch_ms": med[False][1],
               "batch_ms_confidence": med[True][1], "same_text": texts[False] == texts[True]}  # fmt: skip
        rows.append(row)
        print(f"| {b} | {med[False][0]:.1f} | {med[True][0]:.1f} | {med[False][1]:.0f} / {med[True][1]:.0f} "
              f"| {row['same_text']} |", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "clip_s": args.clip_s, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
