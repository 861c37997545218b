"""Benchmark: the GPU thread's Python time after the encoder, per batch, with and without timestamps.

On a GPU the encoder is a few kernels, but what follows (NeMo's TDT greedy decoding loop bookkeeping,
timestamps, building the transcript records) runs Python on the worker's GPU thread and holds the GIL
against the event loop. This measures `ParakeetEngine.decode_encoded` per batch size: "decoding",
"timestamps" (only for requests that ask: `parakeet.core.timestamps`; bench/timestamps.py compares
it with NeMo's) and "records". `--encoder random` feeds random encoder output of the clip's length (no encoder
cost, so the full-size model runs on a CPU too; with random weights the decoder emits random tokens, so token counts
are not speech-like: the table reports them); `--encoder real` runs the whole pipeline on espeak-ng speech.
A timing, never an assertion.

    .venv/bin/python -m tests.support.build_test_models fullsize --out models/parakeet_arch_random.nemo \\
        --arch ../shared/parakeet_tdt_0.6b_v3_arch.yaml --tokenizer-dir ../shared/tokenizers/bpe_8192_random
    .venv/bin/python -m bench gpu_thread --model models/parakeet_arch_random.nemo --batch-sizes 1,8,32
    .venv/bin/python -m bench gpu_thread --model models/digits_tdt.nemo --encoder real
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--encoder", default="random", choices=["random", "real"])
    p.add_argument("--clip-s", type=float, default=15.0)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args()


def main() -> int:
    args = parse_args()

    import numpy as np
    import torch

    from bench._common import load_engine

    device = torch.device(args.device)
    engine = load_engine(args.model, args.device, precision=args.precision, cuda_graphs=args.cuda_graphs,
                         threads=args.threads)  # fmt: skip
    engine.sync_stages = True
    frames = int(args.clip_s / (engine.window_stride_s * engine.subsampling_factor))
    d_model = int(engine.model.cfg.encoder.d_model)
    waves: list[np.ndarray] = []
    if args.encoder == "real":
        from tests.support import speech

        parts, n, i = [], 0, 0
        while n < args.clip_s * 16000:
            w = speech.random_utterance(900 + i).waveform
            parts += [w, np.zeros(4000, dtype=np.float32)]
            n += len(w) + 4000
            i += 1
        waves = [np.concatenate(parts)[: int(args.clip_s * 16000)].astype(np.float32)]
    print(f"{args.model} on {device} ({engine.dtype}), {args.clip_s:g} s clips = {frames} encoder frames, "
          f"encoder {args.encoder}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| batch | timestamps | tokens/item | decoding ms | timestamps ms | records ms | after-encoder ms/item |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for b in (int(x) for x in args.batch_sizes.split(",")):
        for want in (False, True):
            samples: dict[str, list[float]] = {"decoding": [], "timestamps": [], "records": []}
            tokens: list[float] = []
            for r in range(args.repeats + 1):
                if args.encoder == "random":
                    enc = torch.randn(b, d_model, frames, generator=gen).to(device=device, dtype=engine.dtype)
                    lens = torch.full((b,), frames, dtype=torch.int64, device=device)
                    transcripts, stages = engine.decode_encoded(enc, lens, [want] * b)
                else:
                    out = engine.transcribe(waves * b, [want] * b)
                    transcripts, stages = out.transcripts, out.stages_ms
                if r == 0:
                    continue  # warm-up
                for k in samples:
                    samples[k].append(stages[k])
                tokens.append(statistics.fmean(t.num_tokens for t in transcripts))
            mean = {k: statistics.fmean(v) for k, v in samples.items()}
            per_item = sum(mean.values()) / b
            print(f"| {b} | {'yes' if want else 'no'} | {statistics.fmean(tokens):.0f} | {mean['decoding']:.1f} "
                  f"| {mean['timestamps']:.1f} | {mean['records']:.1f} | {per_item:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
