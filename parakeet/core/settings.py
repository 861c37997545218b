"""Every knob of the server, read from environment variables prefixed `PARAKEET_` (pydantic-settings).

Units are in the names. The README lists each setting with its default; `python -m parakeet.core.settings`
prints the effective values (and exits 2 with one line per bad value). This module reads settings only: it
loads no model and touches no GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parakeet.core.errors import InvalidSettings

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"
# Health, probes and metrics (parakeet/api/routes/health.py, metrics.py): open without a key by default, and
# logged at DEBUG (load balancers and scrapers call them every few seconds).
PROBE_AND_METRICS_PATHS = (
    "/health", "/health/live", "/health/ready", "/healthz", "/readyz", "/v1/health/live", "/v1/health/ready",
    "/metrics", "/v1/metrics", "/status",
)  # fmt: skip


class Settings(BaseSettings):
    """Server settings; each field is the env var `PARAKEET_<NAME>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="PARAKEET_", extra="ignore", frozen=True)

    # --- model ---
    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face model id, or the path of a local .nemo file.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: a CUDA GPU claimed through the lock if any is visible, else the CPU."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Encoder/decoder weights dtype. auto: bf16 on GPU, fp32 on CPU."
    )
    cuda_graphs: bool = Field(False, description="Use NeMo's CUDA-graph TDT decoder (GPU only).")
    max_symbols_per_step: int = Field(10, ge=1, description="TDT greedy decoding: max tokens per encoder frame.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op CPU threads per worker (default: torch's own choice)."
    )
    warmup: bool = Field(True, description="Run one batch of synthetic audio before reporting ready.")

    # --- GPU lock ---
    gpu_lock_dir: Path = Field(Path("/tmp/parakeet_gpu_assignments"), description="Folder of the gpu<i>.lock files.")
    gpu_count: int | None = Field(
        None, ge=0, description="GPUs to claim from (default: torch.cuda.device_count()); 0 forces the CPU."
    )

    # --- limits ---
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest request body, bytes.")
    max_audio_duration_s: float = Field(10800.0, gt=0, description="Longest decoded audio, seconds (3 hours).")
    decode_timeout_s: float = Field(120.0, gt=0, description="Per-file limit on the audio decoder, seconds.")
    decode_workers: int = Field(2, ge=1, description="Audio decoder subprocesses per worker.")
    decode_memory_limit_bytes: int | None = Field(
        8 * 1024**3,
        ge=64 * 1024**2,
        description="Address-space cap (RLIMIT_AS) of each decoder subprocess, bytes; unset for none.",
    )

    # --- audio by URL (JSON `audio_url`; parakeet/pipeline/fetch.py) ---
    url_input: bool = Field(False, description="Accept `audio_url` in JSON requests (the server fetches it).")
    url_allowed_hosts: str | None = Field(
        None, description="Comma-separated host names `audio_url` may name (unset: any public host)."
    )
    url_allowed_networks: str | None = Field(
        None,
        description="Comma-separated CIDR networks exempt from the private-address refusal (e.g. an internal "
        "object store, 10.0.5.0/24); unset: none.",
    )
    url_connect_timeout_s: float = Field(5.0, gt=0, description="Connect limit per `audio_url` hop, s.")
    url_timeout_s: float = Field(
        60.0, gt=0, description="Total limit on fetching an `audio_url`, redirects included, s."
    )
    url_max_redirects: int = Field(3, ge=0, description="Most redirects an `audio_url` may take.")

    # --- subtitles (SRT/VTT on /v1/audio/transcriptions; parakeet/api/subtitles.py) ---
    subtitle_max_line_chars: int = Field(42, ge=10, description="Characters per subtitle line.")
    subtitle_max_lines: int = Field(2, ge=1, description="Lines per subtitle cue.")
    subtitle_max_cue_s: float = Field(7.0, gt=0, description="Longest subtitle cue, seconds.")

    # --- long audio (parakeet/pipeline/long_audio.py) ---
    long_audio_threshold_s: float = Field(
        180.0, gt=0, description="Audio longer than this is transcribed in chunks, never with full attention."
    )
    long_audio_chunk_s: float = Field(60.0, gt=5, description="Longest stretch between two cuts, seconds.")
    long_audio_context_s: float = Field(
        2.0, ge=0, description="Audio each chunk also hears beyond each of its cuts, seconds."
    )
    long_audio_search_s: float = Field(
        4.0, gt=0, description="Each cut goes at the quietest 0.1 s within this many seconds before the target."
    )
    long_audio_chunks_in_flight: int = Field(
        4, ge=1, description="Chunks of one long request queued or running at a time."
    )

    # --- batching and admission (parakeet/pipeline/batching.py) ---
    max_batch_size: int = Field(32, ge=1, description="Most requests per batch; 1 = one request at a time.")
    max_batch_audio_s: float = Field(
        480.0, gt=0, description="Most padded audio per batch (batch size x longest item), seconds."
    )
    max_wait_ms: float = Field(
        5.0, ge=0, description="Longest an idle GPU waits for a batch to fill after the first request, ms."
    )
    max_queue_requests: int = Field(
        128, ge=1, description="Admitted, unanswered requests per worker; past it new ones get 429."
    )
    max_queue_audio_s: float = Field(
        1920.0, gt=0, description="Audio waiting per worker, seconds; past it new requests get 429."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest a request may wait in the queue before a 503, seconds."
    )
    max_inflight_audio_bytes: int = Field(
        4 * 1024**3,
        ge=1024 * 1024,
        description="Memory budget per worker for request audio held at once: upload bytes (their Content-Length "
        "before the body is read, the upload cap when none is sent), then the decoded float32 waveform; past it 429.",
    )
    max_uploads_in_progress: int = Field(
        512, ge=1, description="Request bodies being received per worker (not yet in the GPU queue); past it 429."
    )
    body_idle_timeout_s: float = Field(
        30.0, gt=0, description="A request body that sends nothing for this long is cut off with 408, s."
    )
    body_min_rate_bytes_s: float = Field(
        1024.0, ge=0, description="Slowest accepted body rate after the grace period, bytes/s; slower: 408."
    )
    body_grace_s: float = Field(10.0, ge=0, description="Time a body may take before the minimum rate applies, s.")
    shutdown_drain_s: float = Field(
        30.0, ge=0, description="On shutdown, how long admitted requests may take to finish, seconds."
    )

    # --- live streams: WebSocket /ws and /v1/realtime (parakeet/pipeline/streaming.py, docs/streaming.md) ---
    stream_preset: Literal["low-latency", "balanced", "accurate"] = Field(
        "balanced",
        description="Partial-result windows (chunk / right context / left context): low-latency 240/160/4000 ms, "
        "balanced 480/480/4000 ms, accurate 800/1600/9600 ms (NVIDIA's streaming config for this model).",
    )
    stream_chunk_ms: float | None = Field(None, gt=0, description="Override the preset's chunk (step), ms.")
    stream_right_context_ms: float | None = Field(
        None, ge=0, description="Override the preset's right context (look-ahead), ms."
    )
    stream_left_context_ms: float | None = Field(None, ge=0, description="Override the preset's left context, ms.")
    stream_max_streams: int = Field(64, ge=0, description="Open streams per worker; the next is refused (1013).")
    stream_max_step_batch: int = Field(64, ge=1, description="Most streams advanced in one batched step.")
    stream_max_catchup_chunks: int = Field(
        4, ge=1, description="A stream behind real time commits up to this many chunks in one step."
    )
    stream_max_lag_s: float = Field(
        10.0, gt=0, description="Unprocessed audio per stream before the server stops reading its socket, s."
    )
    stream_idle_timeout_s: float = Field(60.0, gt=0, description="A stream silent this long is closed (1008), s.")
    stream_max_session_s: float = Field(10800.0, gt=0, description="Longest stream, s; then closed (1008).")
    stream_max_frame_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest WebSocket message, bytes; a larger one closes (1009)."
    )
    stream_max_utterance_s: float = Field(
        180.0, gt=1, description="An utterance with no end this long is finalized as if it had ended, s."
    )
    stream_vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Speech probability that starts speech (Silero VAD), for /ws?vad=1."
    )
    stream_vad_silence_ms: float = Field(500.0, ge=0, description="Silence that ends an utterance, ms, for /ws?vad=1.")
    stream_vad_prefix_ms: float = Field(300.0, ge=0, description="Audio kept before detected speech, ms.")

    # --- Wyoming (Home Assistant's voice pipeline; parakeet/api/wyoming.py) ---
    wyoming_port: int | None = Field(
        None, ge=1, le=65535, description="TCP port of the Wyoming listener (every worker shares it); off if unset."
    )
    wyoming_host: str = Field("0.0.0.0", description="Address the Wyoming listener binds.")

    # --- logs ---
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line, uvicorn's own lines included."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of the server's own logs (probe requests are logged at DEBUG)."
    )

    # --- access ---
    api_keys: str | None = Field(
        None,
        description="Comma-separated API keys, or the path of a file with one key per line ('#' comments); "
        "when set, requests need `Authorization: Bearer <key>` except on the open paths.",
    )
    auth_open_paths: str = Field(
        ",".join(PROBE_AND_METRICS_PATHS),
        description="Comma-separated paths that need no API key (probes and metrics).",
    )
    web_ui: bool = Field(
        True,
        description="Serve the browser page at / (file upload and live microphone; parakeet/api/web/). "
        "The page and its files need no API key; the API calls it makes do.",
    )
    cors_origins: str | None = Field(
        None,
        description="Comma-separated browser origins allowed by CORS (e.g. https://app.example.com); off if unset.",
    )

    def api_key_list(self) -> list[str]:
        """The configured API keys (empty: no authentication).

        Raises:
            InvalidSettings: the value names a file that cannot be read, or holds no key.
        """
        if not self.api_keys:
            return []
        path = Path(self.api_keys).expanduser()
        if path.is_file() or self.api_keys.startswith(("/", "./", "~")):
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise InvalidSettings(
                    f"PARAKEET_API_KEYS names {path}, which cannot be read ({exc.strerror})"
                ) from None
            keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        else:
            keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if not keys:
            raise InvalidSettings("PARAKEET_API_KEYS is set but holds no key")
        return keys

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    def auth_open_path_list(self) -> list[str]:
        return [p.strip() for p in self.auth_open_paths.split(",") if p.strip()]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Settings that are each in range but contradict one another."""
        if self.long_audio_search_s >= self.long_audio_chunk_s:
            # The quiet-point search runs inside each chunk's own length (long_audio.plan_chunks).
            raise ValueError(
                f"PARAKEET_LONG_AUDIO_SEARCH_S ({self.long_audio_search_s:g}) must be less than "
                f"PARAKEET_LONG_AUDIO_CHUNK_S ({self.long_audio_chunk_s:g})"
            )
        return self


def _describe(exc: ValidationError) -> str:
    """One clause per problem, naming the environment variable, the rule and the value given."""
    clauses = []
    for err in exc.errors():
        loc = "".join(str(p) for p in err.get("loc", ()))
        name = f"PARAKEET_{loc.upper()}: " if loc else ""
        given = f" (got {str(err['input'])[:80]!r})" if loc and "input" in err else ""
        clauses.append(f"{name}{err['msg'].removeprefix('Value error, ')}{given}")
    return "invalid settings: " + "; ".join(clauses)


def load_settings() -> Settings:
    """Read settings from the environment (and nothing else).

    Raises:
        InvalidSettings: a value is out of range or of the wrong type, or two settings contradict each
            other; the message names every offending PARAKEET_* variable and its value.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettings(_describe(exc)) from None


def main() -> int:
    """Print the effective settings (exit 0), or what is wrong with them (exit 2)."""
    try:
        settings = load_settings()
    except InvalidSettings as exc:
        print(exc.message, file=sys.stderr)
        return 2
    for name, value in settings.model_dump().items():
        print(f"PARAKEET_{name.upper()}={value if value is not None else ''}")
    print(f"# read from the environment of pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
