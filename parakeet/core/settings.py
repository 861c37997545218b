"""Every user-facing knob of the server, read from environment variables prefixed `PARAKEET_` (pydantic-settings).

Units are in the names; fields are grouped as the README's "Settings" table is (server, engine, limits, batching,
streams, URL input, access, logs). Internal constants a user would never touch are in `parakeet.core.tuning`, each
with its reason. `python -m parakeet.core.settings` prints the effective values (and exits 2 with one line naming
every bad value or unknown `PARAKEET_*` variable). This module reads settings only: no model, no GPU.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parakeet.core.errors import InvalidSettings

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"
ENV_PREFIX = "PARAKEET_"


class Settings(BaseSettings):
    """Server settings; each field is the env var `PARAKEET_<NAME>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- server (scripts/serve.sh starts uvicorn with the host; its port and workers are uvicorn's own options) ---
    host: str = Field("0.0.0.0", description="Address to listen on (HTTP, and Wyoming when it is on).")
    workers_per_gpu: int = Field(
        1, ge=1, le=8, description="Workers sharing each GPU, each claiming one of its slots (scripts/serve.sh)."
    )

    # --- engine ---
    model: str = Field(DEFAULT_MODEL, description="Hugging Face model id, or the path of a local .nemo file.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: a CUDA GPU claimed through the lock if any is visible, else the CPU."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Encoder/decoder weights dtype. auto: bf16 on GPU, fp32 on CPU."
    )
    encoder_backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="What runs the FastConformer encoder: auto = ONNX Runtime on a CPU worker (NeMo's own export, "
        "kept only if a start-up self-check finds the same frames and tokens), torch on a GPU.",
    )
    cuda_graphs: Literal["auto", "true", "false"] = Field(
        "auto",
        description="NeMo's CUDA-graph TDT decoder. auto: on a GPU, on if a start-up self-check finds it gives the "
        "same tokens, timestamps and stream steps as without; true/false force it (GPU only).",
    )

    # --- limits ---
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest request body, bytes.")
    max_audio_duration_s: float = Field(10800.0, gt=0, description="Longest decoded audio, seconds (3 hours).")
    max_inflight_audio_bytes: int = Field(
        4 * 1024**3,
        ge=1024 * 1024,
        description="Memory budget per worker for request audio held at once, decoder subprocesses included: "
        "upload bytes (their Content-Length before the body is read), then the decoded float32 waveform; past it 429.",
    )
    shutdown_drain_s: float = Field(
        30.0, ge=0, description="On shutdown, how long admitted requests and open streams may take to finish, s."
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

    # --- live streams: WebSocket /ws and /v1/realtime (parakeet/pipeline/stream_scheduler.py) ---
    stream_preset: Literal["low-latency", "balanced", "accurate"] = Field(
        "balanced",
        description="Partial-result windows (chunk / right context / left context): low-latency 240/160/4000 ms, "
        "balanced 480/480/4000 ms, accurate 800/1600/9600 ms (NVIDIA's streaming config for this model).",
    )
    stream_max_streams: int = Field(64, ge=0, description="Open streams per worker; the next is refused (1013).")

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

    # --- Home Assistant's Wyoming protocol (parakeet/api/wyoming.py) ---
    wyoming_port: int | None = Field(
        None, ge=1, le=65535, description="TCP port of the Wyoming listener (every worker shares it); off if unset."
    )

    # --- access ---
    api_keys: str | None = Field(
        None,
        description="Comma-separated API keys, or the path of a file with one key per line ('#' comments); "
        "when set, requests need `Authorization: Bearer <key>` except on the probes, /health and /metrics.",
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

    # --- custom vocabulary ---
    diarization_model: str | None = Field(
        None,
        description="Speaker diarization model beside the ASR model (README 'Speakers'): a Hugging Face id "
        "(nvidia/diar_streaming_sortformer_4spk-v2) or a local .nemo file; unset: no diarization.",
    )
    keywords_file: Path | None = Field(
        None,
        description="Key phrases boosted in every request, one per line (README 'Custom vocabulary'); re-read on "
        "change.",
    )

    # --- transcription jobs (README "Jobs"; parakeet/jobs/store.py, job_runner.py) ---
    jobs: bool = Field(True, description="Transcription jobs (POST /v1/jobs ...): stored, run later, polled.")
    data_dir: Path = Field(
        Path("data"),
        description="Where the jobs database (jobs.sqlite3) and the jobs' audio live; shared by the "
        "workers of one host.",
    )
    jobs_retention_s: float = Field(
        86_400.0, gt=0, description="How long an ended job's result and audio are kept before removal, s."
    )
    jobs_database_url: str | None = Field(
        None, description="postgresql://user:password@host/db: the jobs of many hosts in one PostgreSQL; unset: SQLite."
    )
    jobs_webhook_secret: SecretStr | None = Field(
        None,
        description="Signs job webhooks (Standard Webhooks, a whsec_... base64 secret); unset: webhook_url refused.",
    )

    # --- logs ---
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line, uvicorn's own lines included."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of the server's own logs (probe requests are logged at DEBUG)."
    )

    @field_validator("jobs_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """A Standard Webhooks secret: `whsec_` and base64 (https://www.standardwebhooks.com/), checked by the very
        signer the jobs use, so a malformed one fails at start with one line naming the setting."""
        if value is not None:
            from standardwebhooks.webhooks import Webhook

            try:
                Webhook(value.get_secret_value())
            except Exception as exc:  # noqa: BLE001 - the library raises plain errors (binascii, ValueError)
                raise ValueError(f"not a Standard Webhooks secret (whsec_ + base64): {type(exc).__name__}") from None
        return value

    @field_validator("cuda_graphs", mode="before")
    @classmethod
    def _cuda_graphs_word(cls, value: object) -> object:
        """Booleans and their usual spellings (1/0, on/off, yes/no, any case) as "true"/"false"."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            word = value.strip().lower()
            return {"1": "true", "on": "true", "yes": "true", "0": "false", "off": "false", "no": "false"}.get(
                word, word
            )
        return value

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


def host_workers(environ: Mapping[str, str] | None = None) -> int:
    """uvicorn workers on this host: `WEB_CONCURRENCY`, uvicorn's own variable for `--workers`
    (https://www.uvicorn.org/settings/#production; scripts/serve.sh exports it), or 1."""
    value = (os.environ if environ is None else environ).get("WEB_CONCURRENCY", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def decoder_pool_size(explicit: int | None, cores: int, workers: int) -> int:
    """Decoder subprocesses per worker: `explicit` (Tuning.decode_workers) if set, else the host's cores per worker
    less one (the worker's own event loop and GPU thread), between 2 and 8: `clamp(cores // workers - 1, 2, 8)`,
    `workers` from `host_workers()`.

    Two is the floor so that one slow upload never holds the only decoder; eight the cap because past it a
    worker's event loop, not decoding, bounds its upload rate (BENCHMARKS.md "Front end"). Examples: 2 cores and
    1 worker -> 2; 16 cores and 2 workers -> 7; 64 cores and 8 workers -> 7; 64 cores and 1 worker -> 8.
    """
    if explicit is not None:
        return explicit
    return max(2, min(8, cores // workers - 1))


# Settings an earlier version read, and what replaced each (an unknown name is fatal: these say where it went).
RETIRED = {
    "PARAKEET_PORT": "the port is uvicorn's own option: scripts/serve.sh --port 9000",
    "PARAKEET_WORKERS": "uvicorn's own WEB_CONCURRENCY (scripts/serve.sh exports it; or --workers)",
    "PARAKEET_TORCH_THREADS": "OMP_NUM_THREADS, which torch reads itself (scripts/serve.sh sets it on a CPU)",
    "PARAKEET_GPU_LOCK_DIR": "a fixed folder, /tmp/parakeet_gpu_assignments (README 'How it works')",
    "PARAKEET_DECODE_WORKERS": "derived from the cores per worker (README 'Settings')",
    "PARAKEET_BODY_IDLE_TIMEOUT_S": "a constant, 30 s, beside the body's other limits (parakeet/core/tuning.py)",
    "PARAKEET_REQUEST_TIMEOUT_S": "a constant, 30 s (parakeet/core/tuning.py)",
    "PARAKEET_LONG_AUDIO_THRESHOLD_S": "a constant, 180 s (parakeet/core/tuning.py)",
    "PARAKEET_STREAM_IDLE_TIMEOUT_S": "a constant, 60 s (parakeet/core/tuning.py)",
    "PARAKEET_STREAM_MAX_SESSION_S": "a constant, 3 hours (parakeet/core/tuning.py)",
}


def variable_names() -> list[str]:
    """Every environment variable the server reads: `PARAKEET_<FIELD>` for each settings field."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One clause per `PARAKEET_*` variable in `environ` that no setting reads (a typo would otherwise be silently
    ignored), naming the closest valid name (difflib's ratio, at least 0.6) when there is one."""
    known = set(variable_names())
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)  # the shared prefix would make every name "close"
    clauses = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), suffixes, n=1)
        hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else "README 'Settings' lists the valid names"
        if name.upper() in RETIRED:
            hint = f"no longer a setting: {RETIRED[name.upper()]}"
        clauses.append(f"unknown setting {name} ({hint})")
    return clauses


SECRET_FIELDS = frozenset({"jobs_webhook_secret", "api_keys", "jobs_database_url"})


def _describe(exc: ValidationError) -> list[str]:
    """One clause per problem, naming the environment variable, the rule and the value given."""
    clauses = []
    for err in exc.errors():
        loc = "".join(str(p) for p in err.get("loc", ()))
        name = f"{ENV_PREFIX}{loc.upper()}: " if loc else ""
        secret = loc in SECRET_FIELDS  # a value that must never reach a log
        given = f" (got {str(err['input'])[:80]!r})" if loc and "input" in err and not secret else ""
        clauses.append(f"{name}{err['msg'].removeprefix('Value error, ')}{given}")
    return clauses


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment (and nothing else).

    Args:
        environ: defaults to `os.environ` (the only source pydantic-settings reads); a mapping given here is
            checked for unknown names only.

    Raises:
        InvalidSettings: a value is out of range or of the wrong type, or a `PARAKEET_*` variable names no
            setting; the message names every offending variable and its value (or the closest valid name).
    """
    problems = unknown_variables(os.environ if environ is None else environ)
    settings: Settings | None = None
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = _describe(exc) + problems
    if problems or settings is None:
        raise InvalidSettings("invalid settings: " + "; ".join(problems))
    return settings


def main() -> int:
    """Print the effective settings (exit 0), or what is wrong with them (exit 2)."""
    try:
        settings = load_settings()
    except InvalidSettings as exc:
        print(exc.message, file=sys.stderr)
        return 2
    for name, value in settings.model_dump().items():
        print(f"{ENV_PREFIX}{name.upper()}={value if value is not None else ''}")
    print(f"# read from the environment of pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
