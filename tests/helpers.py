"""Test helpers in one place: the in-process app with its lifespan (fake engine or the digits model), real uvicorn
servers on loopback, waiting for a condition (polling, never a sleep), NeMo's own reference transcripts, and process
inspection. Fixtures that use them are in conftest.py; the fake engine is fakes.py, encoded audio is media.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import soundfile as sf
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning
from tests.support.servers import ServerProcess, free_port, launch_uvicorn

from fakes import FakeEngine, FixedDiarizerFactory, FixedEngineFactory, NoVad, SharedVad, tagged_wave

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def cpu_settings(model_path: Path, **overrides: Any) -> Settings:
    """Settings for an fp32 CPU engine on `model_path` (explicit values: the environment cannot change them; CUDA
    graphs `auto`, the default, which on a CPU means off)."""
    values: dict[str, Any] = {
        "model": str(model_path), "device": "cpu", "precision": "fp32", "cuda_graphs": "auto",
        "encoder_backend": "torch",
    }  # fmt: skip
    return Settings(**{**values, **overrides})


# The encoder backends the tests that compare with NeMo run on (PARAKEET_ENCODER_BACKEND): a module parametrises its
# `digits_engine` over them with `backend_engine` (conftest's `digits_engine` is torch's, `digits_onnx_engine` ONNX
# Runtime's).
ENCODER_BACKENDS = ["torch", "onnxruntime"]


def backend_engine(request: Any, torch_engine: Any) -> Any:
    """The engine of `request.param` ("torch": `torch_engine`; "onnxruntime": the session's ONNX Runtime one)."""
    return request.getfixturevalue("digits_onnx_engine") if request.param == "onnxruntime" else torch_engine


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test's coroutine on a fresh event loop."""
    return asyncio.run(coro)


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, what: str = "the condition") -> Any:
    """Poll `predicate` every 10 ms until it returns something true (returned); AssertionError after `timeout_s`
    (a bound, never an expectation of speed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def until(predicate: Callable[[], Any], timeout_s: float = 60.0, what: str = "the condition") -> Any:
    """`wait_until` on the event loop: poll every 5 ms without blocking it (`predicate` may be a coroutine function)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def wav_of(tag: int, duration_s: float = 1.0) -> bytes:
    """A float32 WAV of `fakes.tagged_wave(tag, duration_s)`: the fake engine answers "<tag> <samples>"."""
    buf = io.BytesIO()
    sf.write(buf, tagged_wave(tag, duration_s), 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


# --- the app in-process: httpx ASGITransport with the lifespan running ------------------------------------


@asynccontextmanager
async def running_app(
    engine: FakeEngine | None = None,
    *,
    load_delay_s: float = 0.0,
    wait_ready: bool = True,
    tuning: Tuning | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """`server.create_app` serving `engine` (a FakeEngine) in this process with its lifespan running
    (decoder subprocesses, GPU thread, batcher), and an httpx client on it (ASGITransport: no socket, for
    behaviour whose subject is not a socket or a process); `settings` are Settings or Tuning fields
    (`split_overrides`). Waits for /health 200 unless `wait_ready` is False."""
    from server import create_app

    def fatal(message: str) -> None:
        raise AssertionError(f"worker would exit: {message}")

    values, tuned = split_overrides({"device": "cpu", "model": "fake", "decode_workers": 1, **settings})
    app = create_app(
        Settings(**values), engine_factory=FixedEngineFactory(engine or FakeEngine(), load_delay_s), on_fatal=fatal,
        vad_factory=NoVad(), tuning=dataclasses.replace(tuning or Tuning(), **tuned),
    )  # fmt: skip
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://parakeet.test", timeout=60) as client:
            if wait_ready:
                for _ in range(600):
                    if (await client.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise TimeoutError("in-process app not ready after 30 s")
            yield app, client


@asynccontextmanager
async def app_client(
    engine: FakeEngine | None = None,
    *,
    load_delay_s: float = 0.0,
    wait_ready: bool = True,
    tuning: Tuning | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """`running_app`'s client alone."""
    async with running_app(engine, load_delay_s=load_delay_s, wait_ready=wait_ready, tuning=tuning, **settings) as (
        _,
        client,
    ):
        yield client


async def post_wav(client: httpx.AsyncClient, tag: int, duration_s: float = 1.0, route: str = "/transcribe",
                   **data: str) -> httpx.Response:  # fmt: skip
    """POST a tagged WAV (see `wav_of`) as the multipart `file` part, with optional text fields."""
    return await client.post(route, files={"file": ("a.wav", wav_of(tag, duration_s))}, data=data or None)


# Limits of the digits app (conftest.digits_client): small, so that limit tests stay fast.
DIGITS_APP_SETTINGS: dict[str, Any] = {
    "data_dir": Path(tempfile.mkdtemp(prefix="parakeet-jobs-")),  # jobs: never the checkout's data/
    "max_upload_bytes": 8 * 1024 * 1024, "max_audio_duration_s": 60, "stream_max_streams": 8,
}  # fmt: skip
DIGITS_APP_TUNING = Tuning(stream_max_frame_bytes=256 * 1024, stream_max_lag_s=2.0, stream_idle_timeout_s=3,
                           decode_workers=2)  # fmt: skip


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A test's app overrides split into Settings fields and Tuning fields (the internal constants, e.g.
    `long_audio_threshold_s`, `request_timeout_s`, `stream_max_session_s`), by name."""
    tuning_names = {f.name for f in dataclasses.fields(Tuning)}
    tuned = {k: v for k, v in overrides.items() if k in tuning_names}
    return {k: v for k, v in overrides.items() if k not in tuning_names}, tuned


def _digits_app(
    engine: Any, vad: Any, model_path: Path, tuning: Tuning | None = None, diarizer: Any = None, **settings: Any
) -> FastAPI:
    from server import create_app

    def fatal(message: str) -> None:
        raise AssertionError(f"worker would exit: {message}")

    values, tuned = split_overrides({"model": str(model_path), "device": "cpu", **DIGITS_APP_SETTINGS, **settings})
    return create_app(Settings(**values), engine_factory=FixedEngineFactory(engine), on_fatal=fatal,
                      vad_factory=SharedVad(vad), diarizer_factory=FixedDiarizerFactory(diarizer),
                      tuning=dataclasses.replace(tuning or DIGITS_APP_TUNING, **tuned))  # fmt: skip


@contextmanager
def digits_app(
    engine: Any, vad: Any, model_path: Path, tuning: Tuning | None = None, diarizer: Any = None, **settings: Any
) -> Iterator[Any]:
    """`server.create_app` serving `engine` (the session's digits engine), `vad` and `diarizer` (or none)
    in-process through Starlette's TestClient (the app and its lifespan on a thread of their own; HTTP, the OpenAI
    SDK with `http_client=` and `websocket_connect` for the live protocols), waiting until /health is 200. Errors
    are answered as a real server answers them (500 in the error shape), not raised into the test."""
    from starlette.testclient import TestClient

    app = _digits_app(engine, vad, model_path, tuning, diarizer, **settings)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/health").status_code == 200, what="the digits app to be ready")
        yield client


@dataclass(frozen=True)
class LiveServer:
    """An app served by uvicorn on a loopback socket, in this process (`live_digits_server`)."""

    url: str


@contextmanager
def live_digits_server(
    engine: Any, vad: Any, model_path: Path, diarizer: Any = None, **settings: Any
) -> Iterator[LiveServer]:
    """The digits app served by a real uvicorn on 127.0.0.1 in a thread of this process (for clients that need a
    socket: a browser, the load tester, the SDK's Realtime client), sharing the session's engine instead of loading
    the model again in a new process; ready once /health is 200."""
    import uvicorn

    port = free_port()
    app = _digits_app(engine, vad, model_path, None, diarizer, **settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert thread.is_alive(), "uvicorn stopped at start-up"
        wait_until(lambda: _status(f"{url}/health") == 200, what="the digits app to be ready")
        yield LiveServer(url)
    finally:
        server.should_exit = True
        thread.join(60)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


# --- NeMo's own answer ------------------------------------------------------------------------------------


def nemo_reference_texts(model_path: Path, waveforms: list[np.ndarray], tmp_path: Path) -> list[str]:
    """NeMo's own transcribe() on FILE PATHS of the same waveforms written as float32 WAV (docs/nemo.md:
    transcribe(list_of_arrays) is not a faithful reference), on a separate model instance."""
    import soundfile as sf
    import torch

    from parakeet.engine.loading import load_asr_model

    paths = []
    for i, w in enumerate(waveforms):
        p = tmp_path / f"ref_{i}.wav"
        sf.write(p, w, 16000, subtype="FLOAT")
        paths.append(str(p))
    model = load_asr_model(str(model_path), torch.device("cpu"))
    model.eval()
    out = model.transcribe(paths, batch_size=4, verbose=False)
    return [h.text if hasattr(h, "text") else str(h) for h in out]


# --- real servers on loopback -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Serve:
    """How conftest's `server` fixture starts a real uvicorn server (its indirect parameter): the fake engine
    (tests/fakes.py, FAKE_* variables) or the digits model, the environment, the workers, and whether to wait until
    every worker is ready."""

    env: Mapping[str, str] = field(default_factory=dict)
    fake: bool = True
    workers: int = 1
    ready: bool = True
    healthcheck_timeout_s: int = 60
    multiprocess_metrics: bool = False  # PROMETHEUS_MULTIPROC_DIR in a new empty folder, as serve.sh sets it


def start_server(
    tmp_dir: Path,
    env: dict[str, str],
    workers: int = 1,
    fake: bool = False,
    port: int | None = None,
    healthcheck_timeout_s: int = 60,
    multiprocess_metrics: bool = False,
) -> ServerProcess:
    """Start uvicorn with `env` added to a clean PARAKEET_* environment; does not wait for readiness.
    `fake`: serve tests/fakes.py's FakeEngine (FAKE_* variables; FAKE_TUNING, JSON, sets Tuning fields, with its
    own GPU lock folder and one decoder by default) instead of a NeMo model (default Tuning: it claims no GPU lock
    on a CPU).
    `healthcheck_timeout_s`: uvicorn's --timeout-worker-healthcheck (as serve.sh: 60)."""
    port = port or free_port()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    base_env.update(
        {
            "PARAKEET_DATA_DIR": str(tmp_dir / "data"),  # the jobs database: never the checkout's data/
            "OMP_NUM_THREADS": "1",  # torch's threads per worker
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_dir / "hf"),  # an empty Hugging Face cache: nothing from the user's
            "PYTHONUNBUFFERED": "1",
        }
    )
    if multiprocess_metrics:
        (tmp_dir / "prom").mkdir(exist_ok=True)
        base_env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_dir / "prom")
    base_env.update(env)
    if fake:  # the fake app's internal constants: its own GPU locks, one decoder, and what the test asks
        tuned = {
            "gpu_lock_dir": str(tmp_dir / "locks"),
            "decode_workers": 1,
            **json.loads(env.get("FAKE_TUNING", "{}")),
        }
        base_env |= {"FAKE_APP": "1", "FAKE_TUNING": json.dumps(tuned)}
    app = ["fakes:app", "--app-dir", str(ROOT / "tests")] if fake else ["server:app"]
    return launch_uvicorn(app, base_env, tmp_dir / f"server-{port}.log", port=port, workers=workers,
                          healthcheck_timeout_s=healthcheck_timeout_s)  # fmt: skip


# --- processes -------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
import gpu_lock
try:
    claim = gpu_lock.claim_gpu(__import__("pathlib").Path({lock_dir!r}), {count}, {slots})
except gpu_lock.NoFreeGpuError as exc:
    print("ERROR", exc, flush=True)
    sys.exit(3)
print("CLAIMED", claim.gpu_id, claim.slot, flush=True)
time.sleep(120)
"""


class Holder:
    """A plain Python process holding one GPU lock of `lock_dir` (gpu_lock.claim_gpu) for two minutes."""

    def __init__(self, lock_dir: Path, count: int, slots: int = 1) -> None:
        code = HOLDER.format(root=str(ROOT), lock_dir=str(lock_dir), count=count, slots=slots)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().strip()

    @property
    def gpu_id(self) -> int:
        assert self.line.startswith("CLAIMED"), self.line
        return int(self.line.split()[1])

    @property
    def slot(self) -> int:
        assert self.line.startswith("CLAIMED"), self.line
        return int(self.line.split()[2])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Wait until none of `pids` is alive; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        time.sleep(0.1)
    return alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def hard_utterance(digits_engine: Any, min_digits: int) -> tuple[bytes, str, str]:
    """A noisy utterance (float32 WAV, so the server decodes the very samples) of at least `min_digits` digits that
    the model gets wrong unboosted but right when its digits are boosted: (wav, spoken text, unboosted text)."""
    from parakeet.core.keywords import KeyPhrases
    from parakeet.pipeline.audio import decode_audio
    from tests.support import speech

    for seed in range(71_000, 71_400):
        u = speech.random_utterance(seed, voices=speech.HELD_OUT_VOICES)
        if len(u.text.split()) < min_digits:
            continue
        wave = (u.waveform + 0.1 * np.random.default_rng(seed).standard_normal(len(u.waveform))).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, wave, 16000, format="WAV", subtype="FLOAT")
        decoded = decode_audio(buf.getvalue(), max_duration_s=60).waveform
        plain = digits_engine.transcribe([decoded], [False]).transcripts[0].text
        boosted = digits_engine.transcribe([decoded], [False], None, [KeyPhrases((u.text,), 2.0)]).transcripts[0].text
        if plain != u.text and boosted == u.text:
            return buf.getvalue(), u.text, plain
    raise AssertionError("no noisy utterance that boosting corrects in 400 seeds")


def offline_hub(monkeypatch: Any, tmp_path: Path) -> None:
    """The Hugging Face hub switched off (HF_HUB_OFFLINE) with an empty cache under `tmp_path`, for loaders' offline
    messages (the hub library reads the flag at import: its constant is patched too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster of its own from the Debian package (initdb + pg_ctl, trust authentication, a free port on
    127.0.0.1 only), removed afterwards; yields its URL. As root (CI), the server runs as the `postgres` user, since
    PostgreSQL refuses to run as root.

    Raises:
        AssertionError: no PostgreSQL binaries (scripts/test.sh installs the `postgresql` package).
    """
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed (scripts/test.sh installs the Debian package `postgresql`)"
    bin_dir = Path(found[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="parakeet-pg-", dir="/tmp"))  # short: a socket path has a length limit
    data, port = base / "data", free_port()
    if as_user:
        shutil.chown(base, "postgres")
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "parakeet"],
                       check=True, capture_output=True)  # fmt: skip
        options = f"-p {port} -k {base} -h 127.0.0.1 -c fsync=off"
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", options,
                        "-w", "-t", "60", "start"], check=True, capture_output=True)  # fmt: skip
        try:
            yield f"postgresql://parakeet@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
