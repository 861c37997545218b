"""Open-loop load test for a transcription server: find the request rate where latency falls apart.

Phase 1 sends `--sequential N` requests one after another (unloaded latency). Phase 2 ramps through
`--rates`: each stage sends requests at scheduled times (constant spacing or Poisson arrivals) for
`--duration-s`; latency is measured from the scheduled time, so a slow server never slows the offered load
(as vLLM's benchmark client does: https://github.com/vllm-project/vllm/tree/main/benchmarks). The first
stage whose p95 exceeds `--slo-p95-ms` or whose error rate exceeds `--max-error-rate` is the breaking point.
Uses aiohttp with one shared session; never imports the server.

    python3 loadtest.py --url http://127.0.0.1:8000 --audio-dir clips/ --rates 10,30,50 --out run.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest_report import (
    LoadTestError,
    RequestRecord,
    RunResult,
    StageSummary,
    markdown_table,
    verdict,
    write_outputs,
)

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".webm"}
ENDPOINTS = {"transcribe": "/transcribe", "openai": "/v1/audio/transcriptions"}


@dataclass(frozen=True)
class AudioFile:
    path: Path
    data: bytes
    duration_s: float


# --- pure parts: schedule, statistics, the breaking-point rule ------------------------------------------


def arrival_times(rate_rps: float, duration_s: float, kind: str, rng: random.Random) -> list[float]:
    """Send times (s from the stage start) of an open-loop stage.

    constant: `round(rate * duration)` requests spaced exactly `1/rate` apart. poisson: exponential gaps of
    mean `1/rate` until `duration_s` (a Poisson process of intensity `rate`).

    Raises:
        ValueError: non-positive rate or duration, or an unknown kind.
    """
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate_rps} req/s for {duration_s} s")
    if kind == "constant":
        return [i / rate_rps for i in range(max(1, round(rate_rps * duration_s)))]
    if kind == "poisson":
        times, t = [], rng.expovariate(rate_rps)
        while t < duration_s:
            times.append(t)
            t += rng.expovariate(rate_rps)
        return times
    raise ValueError(f"unknown arrival process {kind!r} (constant or poisson)")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(stage: str, records: list[RequestRecord], offered_rps: float) -> StageSummary:
    ok = [r for r in records if r.ok]
    latencies = [r.latency_ms for r in ok if r.latency_ms is not None]
    by_status = Counter(str(r.status) for r in records if not r.ok and r.status is not None)
    by_kind = Counter(r.error.split("_")[0] if r.error.startswith("http_") else r.error for r in records if r.error)
    span = 0.0
    if ok:
        start = min(r.scheduled_s for r in records)
        span = max(r.done_s or 0.0 for r in ok) - start
    gpus = Counter(r.gpu_id or "?" for r in ok)
    sizes = [r.batch_size for r in ok if r.batch_size]
    return StageSummary(
        stage=stage,
        offered_rps=offered_rps,
        achieved_rps=len(ok) / span if span > 0 else 0.0,
        sent=len(records),
        ok=len(ok),
        errors_by_status=dict(by_status),
        errors_by_kind=dict(by_kind),
        error_rate=(len(records) - len(ok)) / len(records) if records else 0.0,
        latency_ms={
            "avg": statistics.fmean(latencies) if latencies else None,
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
        },
        rtfx=sum(r.audio_s or 0.0 for r in ok) / span if span > 0 else None,
        gpu_share={g: n / len(ok) for g, n in sorted(gpus.items())},
        mean_batch_size=statistics.fmean(sizes) if sizes else None,
    )


def breaks(summary: StageSummary, slo_p95_ms: float, max_error_rate: float) -> bool:
    """A stage breaks when its p95 exceeds the SLO, its error rate exceeds the limit, or nothing succeeded."""
    p95 = summary.latency_ms["p95"]
    return p95 is None or p95 > slo_p95_ms or summary.error_rate > max_error_rate


# --- audio -------------------------------------------------------------------------------------------------


def load_audio(paths: list[Path]) -> list[AudioFile]:
    """Read the files and check that each is audio (soundfile, or PyAV for M4A/WebM).

    Raises:
        LoadTestError: no files, or a file that is not audio (named).
    """
    if not paths:
        raise LoadTestError("no audio files: give --audio FILE ... or an --audio-dir holding audio files")
    files = []
    for path in paths:
        data = path.read_bytes()
        files.append(AudioFile(path, data, _duration_s(path, data)))
    return files


def _duration_s(path: Path, data: bytes) -> float:
    import io

    try:
        import soundfile as sf

        info = sf.info(io.BytesIO(data))
        return float(info.frames) / float(info.samplerate)
    except Exception:  # noqa: BLE001 - not something libsndfile reads; try FFmpeg
        pass
    try:
        import av

        with av.open(io.BytesIO(data), mode="r") as container:
            if container.duration is not None and any(s.type == "audio" for s in container.streams):
                return float(container.duration) / 1_000_000
    except Exception:  # noqa: BLE001
        pass
    raise LoadTestError(f"{path} is not an audio file this tool can read (WAV, FLAC, OGG, Opus, MP3, M4A, WebM)")


def audio_paths(audio: list[Path] | None, audio_dir: Path | None) -> list[Path]:
    paths = list(audio or [])
    if audio_dir is not None:
        if not audio_dir.is_dir():
            raise LoadTestError(f"--audio-dir {audio_dir} is not a folder")
        found = sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not found:
            raise LoadTestError(f"--audio-dir {audio_dir} holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        paths += found
    return paths


# --- the runner --------------------------------------------------------------------------------------------


@dataclass
class Runner:
    url: str
    files: list[AudioFile]
    endpoint: str = "transcribe"
    model: str = "parakeet-tdt-0.6b-v3"
    timeout_s: float = 60.0
    max_in_flight: int = 1000
    seed: int = 0
    response_format: str | None = None  # --endpoint openai: json, verbose_json, text, srt, vtt
    word_timestamps: bool = False  # --endpoint openai: timestamp_granularities[]=word
    records: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.t0 = time.perf_counter()
        self.in_flight = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def check_server(self, session: aiohttp.ClientSession) -> None:
        """Raises LoadTestError if the server cannot be reached."""
        try:
            async with session.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise LoadTestError(f"cannot reach the server at {self.url}: {exc.__class__.__name__}: {exc}") from exc

    async def send(self, session: aiohttp.ClientSession, rec: RequestRecord, audio: AudioFile) -> None:
        form = aiohttp.FormData()
        form.add_field("file", audio.data, filename=audio.path.name)
        if self.endpoint == "openai":
            form.add_field("model", self.model)
            if self.response_format:
                form.add_field("response_format", self.response_format)
            if self.word_timestamps:
                form.add_field("timestamp_granularities[]", "word")
        rec.sent_s = self.now()
        self.in_flight += 1
        try:
            async with session.post(f"{self.url}{ENDPOINTS[self.endpoint]}", data=form) as resp:
                rec.status = resp.status
                body = await resp.read()
                rec.gpu_id = resp.headers.get("X-Gpu-Id")
                rec.batch_size = int(resp.headers["X-Batch-Size"]) if "X-Batch-Size" in resp.headers else None
                rec.queue_ms = float(resp.headers["X-Queue-Ms"]) if "X-Queue-Ms" in resp.headers else None
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = None
                if resp.status == 200 and self.response_format in ("text", "srt", "vtt"):
                    payload = {"text": body.decode(errors="replace")}  # plain-text formats: no JSON to read
                if resp.status != 200:
                    rec.error = f"http_{resp.status}"
                elif not isinstance(payload, dict) or "text" not in payload:
                    rec.error = "non_json"
                else:
                    rec.audio_s = float(
                        payload.get("duration_sec")
                        or payload.get("duration")
                        or payload.get("usage", {}).get("seconds")
                        or audio.duration_s
                    )
                    if rec.gpu_id is None and payload.get("gpu_id") is not None:
                        rec.gpu_id = str(payload["gpu_id"])
        except TimeoutError:
            rec.error = "timeout"
        except aiohttp.ClientConnectionError:
            rec.error = "connection"
        except aiohttp.ClientError:
            rec.error = "connection"
        finally:
            self.in_flight -= 1
            rec.done_s = self.now()
            rec.latency_ms = (rec.done_s - rec.scheduled_s) * 1000

    async def run_stage(
        self, session: aiohttp.ClientSession, stage: str, offsets: list[float], sequential: bool, progress: Any
    ) -> list[RequestRecord]:
        """Send one request per offset (open loop), or one after another when `sequential`."""
        start = self.now()
        records, tasks = [], []
        try:
            for i, offset in enumerate(offsets):
                audio = self.rng.choice(self.files)
                scheduled = self.now() if sequential else start + offset
                rec = RequestRecord(stage=stage, index=i, file=audio.path.name, scheduled_s=scheduled)
                records.append(rec)
                self.records.append(rec)
                if sequential:
                    await self.send(session, rec, audio)
                    progress.update(1)
                    continue
                delay = scheduled - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.in_flight >= self.max_in_flight:
                    rec.error, rec.done_s = "client_overloaded", self.now()  # bounded: never unbounded tasks
                    progress.update(1)
                    continue
                task = asyncio.ensure_future(self.send(session, rec, audio))
                task.add_done_callback(lambda _t: progress.update(1))
                tasks.append(task)
            if tasks:
                await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            for rec in records:
                if rec.done_s is None:
                    rec.error, rec.done_s = "cancelled", self.now()
            raise
        return records


async def run_load(
    runner: Runner,
    *,
    sequential: int,
    rates: list[float],
    duration_s: float,
    arrivals: str,
    slo_p95_ms: float,
    max_error_rate: float,
    keep_going: bool,
    show_progress: bool = True,
) -> RunResult:
    """Phase 1 (sequential) then the open-loop ramp; stops at the breaking point unless `keep_going`."""
    from tqdm import tqdm

    summaries: list[StageSummary] = []
    stable: float | None = None
    breaking: float | None = None
    interrupted = False
    timeout = aiohttp.ClientTimeout(total=runner.timeout_s)
    connector = aiohttp.TCPConnector(limit=runner.max_in_flight)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await runner.check_server(session)
        plan: list[tuple[str, list[float], bool, float]] = []
        if sequential > 0:
            plan.append(("sequential", [0.0] * sequential, True, 0.0))
        for rate in rates:
            plan.append((f"{rate:g} req/s", arrival_times(rate, duration_s, arrivals, runner.rng), False, rate))
        try:
            for name, offsets, seq, rate in plan:
                with tqdm(total=len(offsets), desc=name, unit="req", disable=not show_progress, leave=False) as bar:
                    records = await runner.run_stage(session, name, offsets, seq, bar)
                offered = len(offsets) / duration_s if not seq else 0.0
                summary = summarize(name, records, offered)
                summaries.append(summary)
                if seq:
                    continue
                summary.breaks = breaks(summary, slo_p95_ms, max_error_rate)
                if summary.breaks and breaking is None:
                    breaking = rate
                    if not keep_going:
                        break
                elif breaking is None:
                    stable = rate
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
            done = {s.stage for s in summaries}
            for name, offsets, seq, _rate in plan:  # the stage that was cut short, summarised as far as it got
                partial = [r for r in runner.records if r.stage == name]
                if partial and name not in done:
                    summaries.append(summarize(name, partial, 0.0 if seq else len(offsets) / duration_s))
    return RunResult(summaries, runner.records, stable, breaking, interrupted)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--audio", type=Path, nargs="+", help="audio files to send")
    p.add_argument("--audio-dir", type=Path, help="folder of audio files to send")
    p.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="transcribe")
    p.add_argument("--model", default="parakeet-tdt-0.6b-v3", help="model field for --endpoint openai")
    p.add_argument(
        "--response-format", choices=["json", "verbose_json", "text", "srt", "vtt"], help="--endpoint openai only"
    )
    p.add_argument("--word-timestamps", action="store_true", help="--endpoint openai: timestamp_granularities[]=word")
    p.add_argument("--sequential", type=int, default=50, help="phase 1: requests one after another")
    p.add_argument("--rates", default="10,30,50,70,80", help="phase 2: offered rates, req/s, comma-separated")
    p.add_argument("--duration-s", type=float, default=10.0, help="seconds per rate stage")
    p.add_argument("--arrivals", choices=["constant", "poisson"], default="constant")
    p.add_argument("--slo-p95-ms", type=float, default=1000.0, help="a stage breaks when p95 exceeds this")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="a stage breaks past this error share")
    p.add_argument("--keep-going", action="store_true", help="ramp on past the breaking point")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    p.add_argument("--max-in-flight", type=int, default=1000, help="bound on concurrent requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write JSON here (and a CSV of requests beside it)")
    p.add_argument("--plot", type=Path, help="draw latency and errors against rate (PNG; needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates must be numbers separated by commas, got {args.rates!r}")
    if any(r <= 0 for r in args.rate_list):
        p.error("--rates must all be positive")
    if (args.response_format or args.word_timestamps) and args.endpoint != "openai":
        p.error("--response-format and --word-timestamps need --endpoint openai")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = load_audio(audio_paths(args.audio, args.audio_dir))
        runner = Runner(
            args.url.rstrip("/"), files, args.endpoint, args.model, args.timeout_s, args.max_in_flight, args.seed,
            args.response_format, args.word_timestamps,
        )  # fmt: skip
        coro = run_load(
            runner,
            sequential=args.sequential,
            rates=args.rate_list,
            duration_s=args.duration_s,
            arrivals=args.arrivals,
            slo_p95_ms=args.slo_p95_ms,
            max_error_rate=args.max_error_rate,
            keep_going=args.keep_going,
            show_progress=not args.quiet,
        )
        try:
            result = asyncio.run(coro)
        except KeyboardInterrupt:  # interrupted outside the ramp's own handler: rebuild from the records
            names = list(dict.fromkeys(r.stage for r in runner.records))
            stages = [summarize(n, [r for r in runner.records if r.stage == n], 0.0) for n in names]
            result = RunResult(stages, runner.records, None, None, interrupted=True)
        print(markdown_table(result.stages))
        print(("interrupted: " if result.interrupted else "") + verdict(result, args.slo_p95_ms, args.max_error_rate))
        write_outputs(result, args.out, args.plot, args.slo_p95_ms)
    except LoadTestError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
