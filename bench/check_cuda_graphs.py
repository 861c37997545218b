"""Same output with CUDA graphs on and off (PARAKEET_CUDA_GRAPHS), on a GPU: texts and word timestamps of offline
batches of mixed lengths, and the committed tokens of every step of 8 streams of mixed lengths (streams finish at
different steps, so the step batch shrinks). Exit 1 on any difference. Recorded run: BENCHMARKS.md "GPU".

    python3 -m bench check_cuda_graphs --model models/parakeet_arch_random.nemo --precision bf16
"""

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import torch

from bench.engine import clips
from inference import build_engine
from parakeet.core.engine import StepRequest
from parakeet.core.settings import Settings
from parakeet.pipeline.stream_config import PRESETS_MS

ROOT = Path(__file__).resolve().parent.parent

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", required=True)
ap.add_argument("--precision", default="bf16")
args = ap.parse_args()
waves = clips(16, 15.0, 0)
rng = random.Random(1)
mixed = [w[: int(rng.uniform(2, 15) * 16000)] for w in waves]
engines = {
    g: build_engine(Settings(model=args.model, precision=args.precision, cuda_graphs=g), torch.device("cuda"))
    for g in (False, True)
}
bad = 0
for sizes in ([1], [5], [16], [3, 11, 2]):
    for n in sizes:
        batch = mixed[:n]
        out = {g: e.transcribe(batch, [True] * n) for g, e in engines.items()}
        for i in range(n):
            a, b = out[False].transcripts[i], out[True].transcripts[i]
            words_a = [(w.text, w.start_s, w.end_s) for w in a.words]
            bad += not (a.text == b.text and words_a == [(w.text, w.start_s, w.end_s) for w in b.words])
        equal = sum(out[False].transcripts[i].text == out[True].transcripts[i].text for i in range(n))
        print(f"offline batch {n}: {equal}/{n} texts equal")


def stream(engine: Any, ws: list[Any], preset: str) -> list[Any]:
    frame = engine.encoder_frame_samples
    c, r, left = (round(ms / (frame / 16)) for ms in PRESETS_MS[preset])
    n_frames = [len(w) // frame for w in ws]
    states, tokens, done = [None] * len(ws), [()] * len(ws), [0] * len(ws)
    log = []
    while any(done[i] < n_frames[i] for i in range(len(ws))):
        reqs, idx = [], []
        for i, w in enumerate(ws):
            if done[i] >= n_frames[i]:
                continue
            lf = min(left, done[i])
            final = done[i] + c + r >= n_frames[i]
            end = n_frames[i] if final else done[i] + c + r
            window = w[(done[i] - lf) * frame : end * frame]
            reqs.append(StepRequest(window, lf, None if final else c, states[i], tokens[i]))
            idx.append((i, final))
        res = engine.stream_step(reqs)
        for (i, final), rr in zip(idx, res.results, strict=True):
            states[i], tokens[i] = rr.state, tuple(rr.tokens)
            done[i] = n_frames[i] if final else done[i] + c
            log.append((i, tokens[i]))
    return log


for preset in ("low-latency", "balanced"):
    logs = {g: stream(e, mixed[:8], preset) for g, e in engines.items()}
    eq = sum(a == b for a, b in zip(logs[False], logs[True], strict=True))
    bad += eq != len(logs[False])
    print(f"streaming {preset}, 8 streams of mixed length: {eq}/{len(logs[False])} step results equal")
print("ALL EQUAL" if bad == 0 else f"DIFFERENCES: {bad}")
sys.exit(1 if bad else 0)
