"""Internal constants of the pipeline, each with the reason for its value: knobs a user would never touch, so they
are not `PARAKEET_*` settings (README "Settings" lists those). One frozen record so that the modules that use them
take them from one place, and so that a test can build the app with smaller values (`create_app(tuning=...)`) to
stay fast; production always runs `Tuning()`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    """Attributes, by the module that reads them:

    parakeet/engine/build.py
        max_symbols_per_step: TDT greedy decoding's most tokens per encoder frame (`greedy.max_symbols`); 10 is
            NeMo's default for Parakeet-TDT's decoding config.
    parakeet/pipeline/worker.py
        device_refresh_s: how often the device-memory gauge and /health's device are refreshed on the GPU thread
            (between batches): a Prometheus scrape every 15 s is its default.
        warmup_audio_s: seconds of synthetic audio in the warm-up batch run before the worker reports ready (enough
            to trigger every lazy initialisation; its time also seeds the first Retry-After estimate).
        queue_audio_batches: the GPU queue refuses new requests (429) once this many full batches of audio
            (`max_batch_audio_s` each) wait: 4 x 480 s = 32 minutes of audio, minutes of work even on a CPU.
        uploads_per_queue_place: request bodies being received at once, per place in the GPU queue
            (`max_queue_requests`): uploads in progress wait apart from the queue (slow ones are cut off by the
            body limits), so there can be more of them; 4 x 128 = 512.
    parakeet/pipeline/decoder_pool.py
        decode_timeout_s: per-file limit on a decoder subprocess; decoding a 3-hour MP3 takes ~60 s on one core.
        decode_memory_limit_bytes: address-space cap (RLIMIT_AS) of each decoder subprocess: the worst legitimate
            file (3 h at 96 kHz in 8 channels, decoded block by block) stays far below it; None for no cap.
    server.py (the GPU lock)
        gpu_lock_dir: the folder of the `gpu<i>.lock` files: one per host, in /tmp so that every checkout and
            container on the host (with /tmp shared) claims GPUs from the same locks.
    parakeet/pipeline/decoder_pool.py (how many)
        decode_workers: decoder subprocesses per worker; None: from the cores per worker
            (`parakeet.core.settings.decoder_pool_size`), which no deployment measured here needed to change.
    parakeet/pipeline/batching.py
        request_timeout_s: longest a request (or one chunk of a long file) may wait in the GPU queue before a 503
            with Retry-After: a client that waited 30 s for its turn is better told to come back (the queue's room,
            PARAKEET_MAX_QUEUE_REQUESTS, is what an operator sizes).
    parakeet/api/middleware.py
        body_idle_timeout_s: a request body that sends nothing for this long is cut off with 408 (a slow-loris
            defence, beside the minimum rate below).
        body_grace_s: how long a request body may take before the minimum rate applies (TCP slow start, a phone
            on a bad link).
        body_min_rate_bytes_s: the slowest average body rate accepted after the grace period (408 below it): 1 KiB/s
            is far below any real upload and far above a slow-loris trickle.
    parakeet/pipeline/fetch.py
        url_connect_timeout_s, url_timeout_s: limits on fetching an `audio_url` (connect per hop; the whole fetch).
        url_max_redirects: redirects an `audio_url` may take (pre-signed object-store URLs take at most one).
    parakeet/pipeline/transcriber.py (long audio)
        long_audio_threshold_s: audio longer than this is transcribed in chunks, never with full attention (3
            minutes: full attention's memory grows with the square of the length; NeMo's own long-audio guidance
            for FastConformer switches to local attention past a few minutes: docs/nemo.md).
        long_audio_chunk_s: longest stretch between two cuts of a long file: short enough for full attention to
            stay cheap, long enough that the 2 s of context on each side is a small overhead.
        long_audio_context_s: audio each chunk also hears beyond each of its cuts.
        long_audio_search_s: each cut goes at the quietest 0.1 s within this many seconds before its target.
        long_audio_chunks_in_flight: chunks of one file queued or running at a time, so that short requests
            interleave with a long file batch by batch.
    parakeet/pipeline/stream_scheduler.py, stream_session.py and parakeet/api/websockets.py
        stream_max_step_batch: most streams advanced in one batched step (a step of 64 x 5.6 s windows is ~360 s of
            padded audio, under one offline batch's budget).
        stream_max_catchup_chunks: a stream behind real time commits up to this many chunks in one step.
        stream_max_lag_s: unprocessed audio per stream before the server stops reading its socket (backpressure).
        stream_idle_timeout_s: a stream that sends no message this long is closed (1008): a microphone sends
            every 20-100 ms, even in silence.
        stream_max_session_s: the longest stream (1008 after its open utterance's final): 3 hours, as the longest
            file (PARAKEET_MAX_AUDIO_DURATION_S's default).
        stream_max_frame_bytes: largest WebSocket message (4 MiB: two minutes of 16 kHz PCM16).
        stream_max_utterance_s: an utterance with no end this long is finalized as if it had ended (the final is
            an offline transcription: full attention over at most this much audio).
    parakeet/api/routes/jobs.py and parakeet/jobs/ (transcription jobs)
        jobs_max_queued: queued jobs before a new submit is a 429 (a night's batch of short files; a row each).
        jobs_max_stored_bytes: audio of all stored jobs (queued, running and kept results) before a submit is a
            507 naming it: 20 GiB, about 5 days of 16 kHz 16-bit mono WAV.
        jobs_at_once: jobs one worker runs together, so that small jobs share batches (a long one's chunks already
            go several at a time).
        jobs_lease_s: a running job's lease, renewed every third of it: how long a job whose worker was killed
            waits before another worker takes it (a stop hands it back at once).
        jobs_poll_s: how often an idle worker looks for a queued job or a due webhook (a submit waits at most this
            long before a worker takes it; each look is one indexed query).
        jobs_busy_wait_s: how soon a worker whose GPU queue had live requests waiting looks again (short: the
            queue empties within a batch, and jobs should fill the next one).
        jobs_gauge_refresh_s: how often a worker refreshes the parakeet_jobs gauge from the database (busy or
            idle; one COUNT per status, a third of Prometheus' default 15 s scrape).
        webhook_backoff_s: the waits between a job webhook's attempts (exponential, as Standard Webhooks advises):
            11 attempts over ~17 minutes, then it is given up (each attempt is recorded on the job).
    parakeet/pipeline/requests.py and diarization.py (speakers)
        diarization_bytes_per_s: memory a diarized request holds against the audio budget per second of audio
            while it is diarized, beyond its waveform: its mel features (computed a minute at a time; 51 KB/s for
            128 mels) and the speaker-cache steps: measured +308 MB over the loaded model and the waveform for an
            hour with the full-size streaming Sortformer (BENCHMARKS "Speakers"), ~86 KB/s.
        diarization_max_batch: most files in one diarization batch (its padded audio is also capped by
            PARAKEET_MAX_BATCH_AUDIO_S, as an ASR batch).
    """

    max_symbols_per_step: int = 10
    diarization_bytes_per_s: int = 90_000
    diarization_max_batch: int = 8
    jobs_max_queued: int = 10_000
    jobs_max_stored_bytes: int = 20 * 1024**3
    webhook_backoff_s: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    jobs_lease_s: float = 30.0
    jobs_at_once: int = 4
    jobs_poll_s: float = 0.5
    jobs_busy_wait_s: float = 0.02
    jobs_gauge_refresh_s: float = 5.0
    warmup_audio_s: float = 2.0
    device_refresh_s: float = 15.0
    queue_audio_batches: float = 4.0
    uploads_per_queue_place: int = 4
    decode_timeout_s: float = 120.0
    decode_memory_limit_bytes: int | None = 8 * 1024**3
    body_grace_s: float = 10.0
    body_min_rate_bytes_s: float = 1024.0
    url_connect_timeout_s: float = 5.0
    url_timeout_s: float = 60.0
    url_max_redirects: int = 3
    long_audio_chunk_s: float = 60.0
    long_audio_context_s: float = 2.0
    long_audio_search_s: float = 4.0
    long_audio_chunks_in_flight: int = 4
    stream_max_step_batch: int = 64
    stream_max_catchup_chunks: int = 4
    stream_max_lag_s: float = 10.0
    stream_max_frame_bytes: int = 4 * 1024 * 1024
    stream_max_utterance_s: float = 180.0
    stream_idle_timeout_s: float = 60.0
    stream_max_session_s: float = 10800.0
    gpu_lock_dir: str = "/tmp/parakeet_gpu_assignments"
    decode_workers: int | None = None
    request_timeout_s: float = 30.0
    body_idle_timeout_s: float = 30.0
    long_audio_threshold_s: float = 180.0

    def __post_init__(self) -> None:
        """Raises: ValueError: the quiet-point search window is not shorter than a chunk (the search runs inside
        each chunk's own length: parakeet/pipeline/long_audio.py)."""
        if not 0 < self.long_audio_search_s < self.long_audio_chunk_s:
            raise ValueError(
                f"long_audio_search_s ({self.long_audio_search_s:g}) must be positive and less than "
                f"long_audio_chunk_s ({self.long_audio_chunk_s:g})"
            )
