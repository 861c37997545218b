"""The prepared GPU benchmark (bench/gpu.sh runs it): one command, at most ~8 minutes on one H100/H200.

`prepare DIR` (on a CPU machine with espeak-ng, before the GPU run): records every espeak-ng waveform the GPU run
needs into DIR/speech.npz (a bare GPU machine has no espeak-ng: speech.py's SPEECH_CACHE replays it), writes the
15 s WAV clips the HTTP load sends into DIR/clips/, and copies the full-size architecture and its 8192-piece
tokenizer into DIR (they live outside the repository, which is all that travels to the GPU machine).

`run DIR OUT` (on the GPU machine), each step with its own time limit, its log and JSON in OUT:
  1. build the full-size random-weight model (Parakeet-TDT-0.6B-v3's architecture, BENCHMARKS.md "Machine");
  2. the engine alone, bf16, batch 64 and 256, CUDA graphs off and on (bench/engine.py);
  3. graphs forced on against off, token for token (bench/check_cuda_graphs.py);
  4. the server through HTTP with k = 1 and k = 2 workers on the GPU, `json` and `verbose_json` with word
     timestamps, open-loop ramp to p95 <= 300 ms (bench/served.py);
  5. live streams held at real time (bench/streams.py);
then OUT/summary.md: the tables, served / engine at the same clip length, verbose_json / json, and k = 2 / k = 1.
A step that fails or runs out of time is reported as such in the summary; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PY = sys.executable
CLIP_S = 15.0
ENGINE_BATCHES = "64,256"
STREAM_UTTERANCES = 24


def prepare(dest: Path, arch: Path, tokenizer_dir: Path) -> int:
    """Record the speech and write the clips (needs SPEECH_RECORD=dest/speech.npz set before speech.py is imported:
    bench_gpu.sh does it)."""
    from bench import engine as bench_engine
    from bench.served import make_clips
    from tests.support import build_test_models, speech

    if os.environ.get("SPEECH_RECORD") != str(dest / "speech.npz"):
        raise SystemExit(f"prepare needs SPEECH_RECORD={dest / 'speech.npz'} (bench/gpu.sh --prepare sets it)")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(arch, dest / "arch.yaml")
    (dest / "tokenizer").mkdir(exist_ok=True)
    for f in tokenizer_dir.iterdir():  # copyfile, not copytree: the source is read-only, the copy must not be
        shutil.copyfile(f, dest / "tokenizer" / f.name)
    build_test_models.calibration_speech(0)  # step 1's blank-bias calibration
    bench_engine.clips(16, CLIP_S, 0)  # steps 2 and 3 (bench_engine and check_cuda_graphs: 16 clips, seed 0)
    for i in range(STREAM_UTTERANCES):  # step 5 (bench_streams: --utterances, one per turn)
        speech.random_utterance(9_000_000 + i * 100)
    make_clips(dest / "clips", CLIP_S, 8)  # step 4's HTTP clips, as files
    print(f"prepared {dest}: arch, tokenizer, {len(list((dest / 'clips').iterdir()))} clips; speech.npz at exit")
    return 0


def step(name: str, cmd: list[str], out: Path, timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one step with its output in out/<name>.log; returns its status and seconds."""
    t0 = time.monotonic()
    log = out / f"{name}.log"
    print(f"[bench_gpu] {name}: {' '.join(cmd)}", flush=True)
    with open(log, "wb") as f:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
            status = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {timeout_s:.0f} s limit"
    seconds = time.monotonic() - t0
    print(f"[bench_gpu] {name}: {status} in {seconds:.0f} s", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1)}


def run(prepared: Path, out: Path, dry_run: bool = False) -> int:
    """The steps on the GPU. `dry_run`: the same steps on the CPU with the digits model and tiny sizes, to check
    the plumbing (and that speech.npz holds every waveform) before spending GPU time; its numbers mean nothing."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SPEECH_CACHE=str(prepared / "speech.npz"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    model = Path("/tmp/bench_gpu/parakeet_arch_random.nemo")
    device, batches, rates, streams_n, ks = (
        "cuda",
        ENGINE_BATCHES,
        "100,200,300,400,500,600,800",
        "16,64,128,256",
        "1,2",
    )
    if dry_run:
        model, device, batches, rates, streams_n = ROOT / "models" / "digits_tdt.nemo", "cpu", "2,4", "2,4", "1,2"
        code = "from tests.support import build_test_models; build_test_models.calibration_speech(0)"
        steps = [step("build", [PY, "-c", code], out, 60, env)]  # the build's speech only
    else:
        steps = [
            step("build", [PY, "-m", "tests.support.build_test_models", "fullsize", "--out", str(model), "--seed", "0",
                           "--arch", str(prepared / "arch.yaml"), "--tokenizer-dir", str(prepared / "tokenizer")],
                 out, 150, env),
        ]  # fmt: skip
    if not model.exists():
        return summarize(out, steps)
    for graphs in (False, True):
        name = f"engine_graphs_{'on' if graphs else 'off'}"
        cmd = [PY, "-m", "bench", "engine", "--model", str(model), "--device", device, "--precision", "bf16",
               "--batch-sizes", batches, "--min-seconds", "4", "--out", str(out / f"{name}.json")]  # fmt: skip
        steps.append(step(name, [*cmd, "--cuda-graphs"] if graphs else cmd, out, 75, env))
    if not dry_run:  # needs CUDA
        check = [PY, "-m", "bench", "check_cuda_graphs", "--model", str(model)]
        steps.append(step("check_cuda_graphs", check, out, 60, env))
    served = [PY, "-m", "bench", "served", "--model", str(model), "--workers-per-gpu", ks,
              "--formats", "json,verbose_json+words", "--rates", rates,
              "--duration-s", "5", "--sequential", "10", "--slo-p95-ms", "300",
              "--clips-dir", str(prepared / "clips"), "--out-dir", str(out / "served")]  # fmt: skip
    steps.append(step("served", served, out, 240, env))
    sizes = ["--batch", "2", "--clip-s", "3"] if dry_run else ["--batch", "16", "--clip-s", "15", "--precision", "bf16"]
    keywords = [PY, "-m", "bench", "keywords", "--model", str(model), "--device", device, *sizes,
                "--repeats", "5", "--weight", "0.001", "--out", str(out / "keywords.json")]  # fmt: skip
    steps.append(step("keywords", keywords, out, 60, env))
    streams = [PY, "-m", "bench", "streams", "--model", str(model), "--streams", streams_n, "--stage-s", "8",
               "--utterances", str(STREAM_UTTERANCES), "--out", str(out / "streams.json")]  # fmt: skip
    steps.append(step("streams", streams, out, 90, env))
    # last: the step most likely to be cut if the run is long (the hour is diarized twice, in fresh processes)
    diar = ["--models", "tiny", "--repeats", "1"] if dry_run else ["--models", "full", "--precision", "bf16"]
    diarization = [PY, "-m", "bench", "diarization", *diar, "--device", device,
                   "--out", str(out / "diarization.json")]  # fmt: skip
    steps.append(step("diarization", diarization, out, 90, env))
    return summarize(out, steps)


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _diarization_lines(out: Path) -> list[str]:
    """The summary's lines for the diarization step (bench/diarization.py's JSON), or none."""
    data = _load(out / "diarization.json")
    if not data:
        return []
    lines = ["", "Speakers, the diarizer alone (full-size streaming Sortformer v2 architecture, random weights):", "",
             "| model | one 15 s ms | one minute ms (RTFx) | batch 4 x 15 s ms | 4 single calls ms |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in data["rows"]:
        lines.append(f"| {r['model']} | {r['ms_15s']:.0f} | {r['ms_per_minute']:.0f} ({r['rtfx']:.0f}x) | "
                     f"{r['ms_batch4x15']:.0f} | {r['ms_4_singles']:.0f} |")  # fmt: skip
    for h in data["hour"]:
        lines.append(f"- 1 hour, features per {h['feature_chunk_s']:.0f} s: {h['seconds']:.1f} s, device peak over "
                     f"the model {_num(h.get('device_peak_over_model_mb'), '.0f')} MB")  # fmt: skip
    return lines


def summarize(out: Path, steps: list[dict[str, Any]]) -> int:
    """OUT/summary.md and OUT/summary.json from what the steps wrote."""
    lines = ["# GPU benchmark (bench/gpu.sh)", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} |" for s in steps]
    engine: dict[str, dict[int, float]] = {}
    for graphs in ("off", "on"):
        data = _load(out / f"engine_graphs_{graphs}.json")
        if data:
            engine[graphs] = {int(r["batch"]): float(r["req_per_s"]) for r in data["rows"]}
    if engine:
        lines += ["", "Engine alone, bf16, 15 s clips (req/s = clips/s; RTFx = req/s x 15):", "",
                  "| batch | graphs off req/s | graphs on req/s | on / off |", "|---|---|---|---|"]  # fmt: skip
        for b in sorted(set().union(*[set(v) for v in engine.values()])):
            off, on = engine.get("off", {}).get(b), engine.get("on", {}).get(b)
            ratio = f"{on / off:.2f}x" if on and off else "-"
            lines.append(f"| {b} | {_num(off, '.1f')} | {_num(on, '.1f')} | {ratio} |")
    served = _load(out / "served" / "served.json")
    if served:
        lines += ["", (out / "served" / "served.md").read_text()]
        best_engine = max(engine.get("on", {}).values() or engine.get("off", {}).values() or [0.0])
        for row in served["rows"]:
            got = row.get("achieved_rps_at_slo")
            if got and best_engine:
                k, fmt = row["workers_per_gpu"], row["format"]
                lines.append(f"- served / engine alone (its best batch, graphs on): k = {k} {fmt}: "
                             f"{got / best_engine:.0%} ({got} of {best_engine:.1f} req/s)")  # fmt: skip
    streams = _load(out / "streams.json")
    if streams:
        lines += ["", "Live streams (balanced preset), one worker:", "",
                  "| streams | holds real time | partial lag p95 s | EOS-to-final p95 ms |",
                  "|---|---|---|---|"]  # fmt: skip
        for st in streams["stages"]:
            lag, final = st.get("partial_lag_p95_s"), st.get("eos_to_final_p95_ms")
            lines.append(f"| {st['streams']} | {st['holds_real_time']} | {_num(lag, '.3f')} | {_num(final, '.0f')} |")
    keywords = _load(out / "keywords.json")
    if keywords:
        lines += ["", "Key-phrase boosting, engine alone, 16 x 15 s, weight 0.001 (the cost without the effect):", "",
                  "| phrases | first batch ms | cached batch ms | without phrases ms | added, cached |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in keywords["rows"][1:]:
            lines.append(f"| {r['phrases']} | {r['first_ms']:.0f} | {r['cached_ms']:.0f} | {r['plain_ms']:.0f} | "
                         f"{r['added_cached']:+.1%} |")  # fmt: skip
    lines += _diarization_lines(out)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"steps": steps, "engine": engine}, indent=1))
    print("\n".join(lines))
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="on a CPU machine: record speech, write clips, copy arch and tokenizer")
    pp.add_argument("dest", type=Path)
    pp.add_argument("--arch", type=Path, default=SHARED / "parakeet_tdt_0.6b_v3_arch.yaml")
    pp.add_argument("--tokenizer-dir", type=Path, default=SHARED / "tokenizers" / "bpe_8192_random")
    pr = sub.add_parser("run", help="on the GPU machine")
    pr.add_argument("prepared", type=Path)
    pr.add_argument("out", type=Path)
    pr.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, tiny (plumbing check)")
    args = p.parse_args()
    if args.command == "prepare":
        return prepare(args.dest.resolve(), args.arch, args.tokenizer_dir)
    return run(args.prepared.resolve(), args.out.resolve(), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
