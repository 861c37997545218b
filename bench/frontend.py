"""Benchmark: the server's own per-request cost, side by side with its framework's floor, in one run.

Starts on loopback, one uvicorn worker each, one after another with the same client and the same clips:
  (1) bare     a FastAPI endpoint that reads the multipart upload and answers JSON (the floor);
  (2) noop     the server with an engine that does nothing (HTTP + admission + decoding + batching, no model);
  (3) digits   the server with the digits test model (or --model);
then the engine alone, in this process, on the same decoded clips at the batch sizes (3) ran.
Clips: 15 s of speech as WAV 16 kHz PCM16, MP3 44.1 kHz stereo and FLAC 16 kHz. Per server and clip: unloaded
sequential latency, then a closed loop of --concurrency clients for --duration-s. Prints one table, the
ratios (2)/(1) and (3)/(engine alone), and where the time of a request goes (read, decode, queue, compute,
respond). A timing, never an assertion: numbers hold for this machine and run only (BENCHMARKS.md).

    .venv/bin/python -m bench frontend                      # ~3 minutes on 2 cores
    .venv/bin/python -m bench frontend --servers bare,noop --clips wav --duration-s 5 --out run.json
    .venv/bin/python -m bench frontend --servers noop,noop@2 --clips wav,mp3   # k = 1 vs 2 workers
    .venv/bin/python -m bench frontend --servers noop+d1,noop+d2,noop+d4 --clips mp3  # decoder pool sizes
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # the bare app's route annotations are resolved from module globals
from fastapi.responses import JSONResponse

from tests.support.servers import start_uvicorn

ROOT = Path(__file__).resolve().parent.parent

CLIP_S = 15.0


# --- the apps uvicorn serves (imported by name in the server subprocesses: keep module import cheap) ------


def _bare_app() -> Any:
    app = FastAPI()

    @app.post("/transcribe")
    async def transcribe(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        async with request.form() as form:
            upload = form["file"]
            data = await upload.read()  # type: ignore[union-attr]
        return JSONResponse({"text": "", "bytes": len(data), "processing_time_ms": (time.perf_counter() - t0) * 1000})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


class NoopEngine:
    """An engine that does nothing: every transcript empty, no compute (the server's own cost alone)."""

    model_name = "noop"
    encoder_frame_samples = 1280
    diarizer: Any = None

    def transcribe(self, waveforms: Any, timestamps: Any = None, confidence: Any = None, keywords: Any = None) -> Any:
        from parakeet.core.transcripts import BatchResult, Transcript

        return BatchResult([Transcript("", 0, len(w) // 1280) for w in waveforms], 0.0)

    def stream_step(self, requests: Any) -> Any:
        from parakeet.core.engine import StepBatchResult, StepResult

        return StepBatchResult(
            [StepResult(r.tokens, "", "", None, len(r.window) // 1280 - r.left_frames) for r in requests], 0.0
        )

    def unspellable(self, text: str) -> str:
        return ""

    def warmup(self, duration_s: float = 2.0) -> float:
        return 0.0

    def device_info(self) -> Any:
        from parakeet.core.engine import CPU_DEVICE

        return CPU_DEVICE


class NoopFactory:
    def visible_gpus(self) -> int:
        return 0

    def __call__(self, settings: Any, gpu_id: int | None) -> NoopEngine:
        return NoopEngine()


def __getattr__(name: str) -> Any:  # `uvicorn bench_frontend:bare_app` / `:noop_app` (PEP 562)
    if name == "bare_app":
        return _bare_app()
    if name == "noop_app":
        from parakeet.core.tuning import Tuning
        from server import create_app

        decoders = os.environ.get("BENCH_DECODE_WORKERS")
        return create_app(
            engine_factory=NoopFactory(), tuning=Tuning(decode_workers=int(decoders) if decoders else None)
        )
    raise AttributeError(name)


# --- clips ---------------------------------------------------------------------------------------------------


def make_clips(seed: int) -> dict[str, bytes]:
    """15 s of digit speech (espeak-ng) as WAV 16 kHz PCM16, MP3 44.1 kHz stereo and FLAC 16 kHz PCM16."""
    import numpy as np
    import soundfile as sf
    import soxr

    from tests.support import speech

    parts, n, i = [], 0, 0
    while n < CLIP_S * 16000:
        w = speech.random_utterance(seed + i).waveform
        gap = np.zeros(4000, dtype=np.float32)
        parts += [w, gap]
        n += len(w) + len(gap)
        i += 1
    wave = np.concatenate(parts)[: int(CLIP_S * 16000)]
    clips = {}
    for name, rate, channels, fmt, subtype in [
        ("wav", 16000, 1, "WAV", "PCM_16"),
        ("mp3", 44100, 2, "MP3", "MPEG_LAYER_III"),
        ("flac", 16000, 1, "FLAC", "PCM_16"),
    ]:
        data = wave if rate == 16000 else soxr.resample(wave, 16000, rate)
        if channels == 2:
            data = np.stack([data, 0.9 * data], axis=1)
        buf = io.BytesIO()
        sf.write(buf, data, rate, format=fmt, subtype=subtype)
        clips[name] = buf.getvalue()
    return clips


# --- servers -------------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def parse_server(spec: str) -> tuple[str, int, int | None]:
    """`name[@workers][+d<decoders>]`: "noop", "noop@2" (two uvicorn workers), "noop+d4" (4 decoder subprocesses)."""
    rest, _, dec = spec.partition("+d")
    name, _, workers = rest.partition("@")
    return name, int(workers or 1), int(dec) if dec else None


def start(spec: str, args: argparse.Namespace, tmp: Path) -> Server:
    name, workers, decoders = parse_server(spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    env.update(
        {
            "OMP_NUM_THREADS": str(args.threads),
            "PARAKEET_MAX_QUEUE_REQUESTS": str(max(128, 4 * args.concurrency)),
            "HF_HUB_OFFLINE": "1",
        }
    )
    env.update(dict(kv.split("=", 1) for kv in args.env))
    env["WEB_CONCURRENCY"] = str(workers)  # as serve.sh exports it: the decoder pools follow the cores per worker
    if decoders is not None:
        if name == "model":
            raise SystemExit("+d<decoders> takes the bare and noop servers (the model server's pool is its default)")
        env["BENCH_DECODE_WORKERS"] = str(decoders)  # read by noop_app (Tuning.decode_workers)
    if name == "bare":
        app = ["bench.frontend:bare_app"]
    elif name == "noop":
        app = ["bench.frontend:noop_app"]
    else:
        app = ["server:app"]
        env["PARAKEET_MODEL"] = args.model
    log_path = tmp / f"{spec.replace('@', '_').replace('+', '_')}.log"
    proc, url = start_uvicorn([*app, "--no-access-log"], env, log_path, timeout_s=180, workers=workers)
    return Server(spec, url, proc, log_path)


# --- the client ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    latency_ms: float
    status: int
    server_ms: float | None = None  # processing_time_ms: from the route's start to its answer
    decode_ms: float | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    batch_size: int | None = None


@dataclass
class Result:
    server: str
    clip: str
    sequential: list[Sample] = field(default_factory=list)
    loaded: list[Sample] = field(default_factory=list)
    loaded_s: float = 0.0

    @property
    def rps(self) -> float:
        return sum(1 for s in self.loaded if s.status == 200) / self.loaded_s if self.loaded_s else 0.0


async def _one(session: Any, url: str, clip_name: str, data: bytes) -> Sample:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", data, filename=f"clip.{clip_name}", content_type="application/octet-stream")
    t0 = time.perf_counter()
    async with session.post(f"{url}/transcribe", data=form) as r:
        body = await r.read()
    latency_ms = (time.perf_counter() - t0) * 1000
    sample = Sample(latency_ms, r.status)
    if r.status == 200:
        j = json.loads(body)
        sample.server_ms = j.get("processing_time_ms")
        sample.decode_ms, sample.queue_ms = j.get("decode_ms"), j.get("queue_ms")
        sample.compute_ms, sample.batch_size = j.get("compute_ms"), j.get("batch_size")
    return sample


async def measure(server: Server, clip_name: str, data: bytes, args: argparse.Namespace) -> Result:
    import aiohttp

    result = Result(server.name, clip_name)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(3):  # warm the connection and the server's first-call paths
            await _one(session, server.url, clip_name, data)
        for _ in range(args.sequential):
            result.sequential.append(await _one(session, server.url, clip_name, data))
        stop_at = time.perf_counter() + args.duration_s

        async def client() -> None:
            while time.perf_counter() < stop_at:
                result.loaded.append(await _one(session, server.url, clip_name, data))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        result.loaded_s = time.perf_counter() - t0
    return result


# --- the engine alone ----------------------------------------------------------------------------------------


def engine_alone(model: str, clips: dict[str, bytes], batch_sizes: dict[str, float], threads: int) -> dict[str, float]:
    """Requests per second of the bare engine on each clip's decoded waveform at the (rounded) mean batch size
    the server ran it at."""
    import torch

    from inference import build_engine
    from parakeet.core.settings import Settings
    from parakeet.pipeline.audio import decode_audio

    if threads:  # CPU threads: torch's own (the server's workers take OMP_NUM_THREADS)
        torch.set_num_threads(threads)
    engine = build_engine(Settings(model=model, device="cpu", precision="fp32"), torch.device("cpu"))
    out = {}
    for name, data in clips.items():
        wave = decode_audio(data, max_duration_s=60).waveform
        b = max(1, round(batch_sizes.get(name, 1.0)))
        engine.transcribe([wave] * b)
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < 3.0:
            engine.transcribe([wave] * b)
            n += 1
        out[name] = n * b / (time.perf_counter() - t0)
    return out


# --- report --------------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def _mean(values: Sequence[float | None]) -> float:
    v = [x for x in values if x is not None]
    return statistics.fmean(v) if v else float("nan")


def report(results: list[Result], engine_rps: dict[str, float]) -> str:
    lines = [
        "| server | clip | unloaded mean ms | unloaded p50 ms | req/s (closed loop) | p50 ms | p95 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        seq = [s.latency_ms for s in r.sequential]
        lat = [s.latency_ms for s in r.loaded if s.status == 200]
        errors = sum(1 for s in r.loaded if s.status != 200)
        lines.append(
            f"| {r.server} | {r.clip} | {_mean(seq):.1f} | {_pct(seq, 50):.1f} | {r.rps:.1f} | {_pct(lat, 50):.1f} "
            f"| {_pct(lat, 95):.1f} | {errors} |"
        )
    by = {(r.server, r.clip): r for r in results}
    lines += ["", "| clip | noop/bare req/s | noop - bare unloaded ms | digits/engine alone req/s (batch) |"]
    lines += ["|---|---|---|---|"]
    for clip in dict.fromkeys(r.clip for r in results):
        bare, noop, digits = by.get(("bare", clip)), by.get(("noop", clip)), by.get(("digits", clip))
        ratio = f"{noop.rps / bare.rps:.0%}" if bare and noop and bare.rps else "-"
        added = (
            f"{_mean([s.latency_ms for s in noop.sequential]) - _mean([s.latency_ms for s in bare.sequential]):+.1f}"
            if bare and noop
            else "-"
        )
        served = "-"
        if digits and clip in engine_rps:
            b = _mean([s.batch_size for s in digits.loaded])
            served = f"{digits.rps / engine_rps[clip]:.0%} ({b:.1f})"
        lines.append(f"| {clip} | {ratio} | {added} | {served} |")
    lines += [
        "",
        "Where an unloaded request's time goes (mean ms; read+parse = server - decode - queue - compute;",
        "respond+wire = client latency - server):",
        "",
        "| server | clip | client | server | decode | queue | compute | read+parse | respond+wire |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.server == "bare":
            continue
        s = r.sequential
        client, server = _mean([x.latency_ms for x in s]), _mean([x.server_ms for x in s])
        dec, q, comp = _mean([x.decode_ms for x in s]), _mean([x.queue_ms for x in s]), _mean([x.compute_ms for x in s])
        lines.append(
            f"| {r.server} | {r.clip} | {client:.1f} | {server:.1f} | {dec:.1f} | {q:.1f} | {comp:.1f} "
            f"| {server - dec - q - comp:.1f} | {client - server:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--servers", default="bare,noop,digits",
        help="comma-separated: bare, noop, digits, each optionally @<uvicorn workers> and +d<decoder subprocesses>",
    )  # fmt: skip
    p.add_argument("--clips", default="wav,mp3,flac", help="comma-separated: wav, mp3, flac")
    p.add_argument("--model", default=str(ROOT / "models" / "digits_tdt.nemo"), help="model of the digits server")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration-s", type=float, default=8.0, help="closed-loop time per server and clip")
    p.add_argument("--sequential", type=int, default=30, help="unloaded requests per server and clip")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model server and engine")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the servers (repeatable)")
    p.add_argument("--out", type=Path, help="write every sample as JSON")
    args = p.parse_args()

    all_clips = make_clips(args.seed)
    clips = {c: all_clips[c] for c in args.clips.split(",")}
    print("clips: " + ", ".join(f"{k} {len(v) / 1e6:.2f} MB" for k, v in clips.items()), flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.servers.split(","):
            server = start(name, args, Path(tmp))
            try:
                for clip, data in clips.items():
                    r = asyncio.run(measure(server, clip, data, args))
                    unloaded_ms = _mean([s.latency_ms for s in r.sequential])
                    print(f"{name:6s} {clip:4s}: {r.rps:7.1f} req/s, unloaded {unloaded_ms:6.1f} ms", flush=True)
                    results.append(r)
            finally:
                server.stop()
    engine_rps: dict[str, float] = {}
    digits = [r for r in results if r.server == "digits"]
    if digits:
        sizes = {r.clip: _mean([s.batch_size for s in r.loaded]) for r in digits}
        engine_rps = engine_alone(args.model, clips, sizes, args.threads)
    print()
    print(report(results, engine_rps))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "engine_rps": engine_rps,
                    "results": [asdict(r) | {"rps": r.rps} for r in results],
                },
                indent=1,
            )  # fmt: skip
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
