"""Benchmark: what diarization costs, the diarizer alone (inference.SortformerDiarizer, no HTTP), on the CPU.

Models: the tiny random Sortformer the tests use (models/tiny_sortformer.nemo, offline) and NVIDIA's streaming
Sortformer v2 architecture with random weights (build_test_models.full_size_sortformer_config: 17 FastConformer
layers of 512, 18 Transformer layers of 192, speaker cache; the cost does not depend on the weights). Per model:
one 15 s request (the latency diarize=true adds after the transcript), one minute (RTFx), a batch of 4 x 15 s
against 4 single calls, and, in a fresh process each, the peak memory over the loaded model and the waveform while
diarizing a 1-hour file (`--hour`; the offline model refuses past 90 s, so only the streaming one), with the mel
features computed a minute at a time (the server) and the whole hour at once (NeMo's way). Speech: espeak-ng digits
with pauses (bench_engine.clips). A timing, never an assertion.

    .venv/bin/python -m bench diarization --out bench/results/diarization_cpu.json
    python -m bench diarization --models full --device cuda --precision bf16   # a GPU (bench/gpu.sh)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load(name: str, feature_chunk_s: float = 60.0, device: str = "cpu", precision: str = "auto") -> Any:
    import torch

    from inference import SortformerDiarizer, load_diarization_model

    if name == "tiny":
        model = load_diarization_model(str(ROOT / "models" / "tiny_sortformer.nemo"), torch.device(device))
    else:
        from nemo.collections.asr.models import SortformerEncLabelModel

        from tests.support.build_test_models import full_size_sortformer_config

        torch.manual_seed(0)
        model = SortformerEncLabelModel(full_size_sortformer_config()).to(device)
    return SortformerDiarizer(model, torch.device(device), model_name=name, precision=precision,
                              feature_chunk_s=feature_chunk_s)  # fmt: skip


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hour(name: str, feature_chunk_s: float, device: str, precision: str) -> dict[str, Any]:
    """In this (fresh) process: the peak RSS after loading (and the hour's waveform), then after diarizing it, its
    mel features computed `feature_chunk_s` of audio at a time (an hour or more: the whole file at once, as NeMo).
    On a CUDA device also the peak device memory over the loaded model."""
    import numpy as np
    import torch

    from bench.engine import clips

    diarizer = load(name, feature_chunk_s, device, precision)
    minute = np.concatenate(clips(4, 15.0, 1))
    diarizer.diarize([minute])  # warm
    audio = np.tile(minute, 60)
    loaded = peak_rss_mb()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    segments = diarizer.diarize([audio])[0]
    gpu_mb = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return {"model": name, "feature_chunk_s": feature_chunk_s, "seconds": time.perf_counter() - t0,
            "rss_loaded_mb": loaded, "rss_peak_mb": peak_rss_mb(), "device_peak_over_model_mb": gpu_mb,
            "segments": len(segments)}  # fmt: skip


def timings(name: str, repeats: int, device: str, precision: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from bench.engine import clips

    diarizer = load(name, device=device, precision=precision)
    params = sum(p.numel() for p in diarizer.model.parameters())
    fifteen = clips(4, 15.0, 0)
    minute = np.concatenate(fifteen)

    def ms(waves: list[Any]) -> float:
        t0 = time.perf_counter()
        diarizer.diarize(waves)
        return (time.perf_counter() - t0) * 1000

    ms(fifteen[:1])  # warm-up
    one = statistics.median(ms(fifteen[:1]) for _ in range(repeats))
    per_minute = statistics.median(ms([minute]) for _ in range(repeats))
    batch = statistics.median(ms(fifteen) for _ in range(repeats))
    singles = statistics.median(sum(ms([w]) for w in fifteen) for _ in range(repeats))
    return {"model": name, "params_m": params / 1e6, "threads": torch.get_num_threads(), "ms_15s": one,
            "ms_per_minute": per_minute, "rtfx": 60_000 / per_minute, "ms_batch4x15": batch,
            "ms_4_singles": singles}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hour", help="internal: run the 1-hour memory measurement of this model and print JSON")
    p.add_argument("--feature-chunk-s", type=float, default=60.0, help="internal: with --hour")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="auto", help="as PARAKEET_PRECISION (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.hour:
        print(json.dumps(hour(args.hour, args.feature_chunk_s, args.device, args.precision)))
        return 0
    rows = [timings(m, args.repeats, args.device, args.precision) for m in args.models.split(",")]
    print("| model | M params | one 15 s ms | one minute ms (RTFx) | batch 4 x 15 s ms | 4 single calls ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.1f} | {r['ms_15s']:.0f} | {r['ms_per_minute']:.0f} ({r['rtfx']:.0f}×) "
              f"| {r['ms_batch4x15']:.0f} | {r['ms_4_singles']:.0f} |")  # fmt: skip
    memory = []
    if "full" in args.models.split(","):
        for chunk_s in (60.0, 7200.0):  # mel features a minute at a time (the server), then the whole hour at once
            cmd = [sys.executable, __file__, "--hour", "full", "--feature-chunk-s", str(chunk_s), "--device",
                   args.device, "--precision", args.precision]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
            m = memory[-1]
            how = "features a minute at a time" if chunk_s < 3600 else "the whole hour's features at once (NeMo)"
            print(
                f"1 hour, streaming full-size, {how}: {m['seconds']:.0f} s, peak RSS {m['rss_peak_mb']:.0f} MB "
                f"({m['rss_peak_mb'] - m['rss_loaded_mb']:+.0f} MB over the loaded model and the hour's waveform), "
                f"{m['segments']} segments"
                + (f", device peak {m['device_peak_over_model_mb']:+.0f} MB" if m["device_peak_over_model_mb"] else "")
            )
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "hour": memory}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
