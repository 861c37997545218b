"""Dynamic batching and admission control for one worker: an asyncio queue in front of ONE GPU thread.

Requests are admitted (or refused with 429) before their upload is read, wait in a bounded queue, and are
grouped into batches of similar length that run one at a time on the worker's GPU thread, so the event
loop (uploads, /health) never blocks. Shape follows Ray Serve's `@serve.batch` and text-embeddings-
inference's queue: the wait clock starts at the oldest waiting item; batches are capped by count and by
padded audio; cancelled requests are dropped before the GPU; an exception fails only its batch; the loop
never dies. The batches run through the worker's GPU arbiter (parakeet.pipeline.gpu), which interleaves them
with streaming steps. This module knows nothing of HTTP or torch: the engine is `parakeet.core.engine.Engine`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from parakeet.core import metrics
from parakeet.core.engine import SAMPLE_RATE_HZ, Engine, Waveform
from parakeet.core.errors import DeadlineExceeded, DeviceOutOfMemory, InferenceError, Overloaded, ShuttingDown
from parakeet.core.keywords import KeyPhrases
from parakeet.core.transcripts import Transcript
from parakeet.pipeline.batch_policy import BatcherConfig, ItemOptions, nearest_in_length
from parakeet.pipeline.gpu import GpuArbiter

log = logging.getLogger("parakeet.batching")

# The official openai-python SDK honours Retry-After only when 0 < value <= 120 s
# (openai/_constants.py MAX_RETRY_AFTER_DELAY, used in _base_client.py), so a longer one would be ignored.
MAX_RETRY_AFTER_S = 120


@dataclass(frozen=True)
class ItemResult:
    """One request's share of a batch: its transcript and where its time went."""

    transcript: Transcript
    queue_ms: float  # from submit to the start of its batch
    compute_ms: float  # the whole batch's engine time
    batch_size: int


@dataclass(eq=False)
class _Item:
    ticket: Ticket
    waveform: Waveform
    options: ItemOptions
    enqueued_at: float
    deadline: float
    future: asyncio.Future[ItemResult]
    started: bool = False  # taken into a batch: from then on it runs to completion, deadline or not

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / SAMPLE_RATE_HZ


@dataclass
class Ticket:
    """An admitted request's place in the worker, from before its upload is read until it is answered.
    Release it exactly once (`Batcher.release`), whatever happens to the request."""

    released: bool = False


@dataclass
class BatcherStats:
    batches: int = 0
    cancelled: int = 0
    expired: int = 0
    failed_batches: int = 0
    oom_splits: int = 0
    # Exponentially weighted throughput of the engine in audio seconds per wall second (RTFx).
    rtfx_ewma: float | None = None
    batch_sizes: list[int] = field(default_factory=list)  # the last 1000, for mean batch size

    def observe(self, audio_s: float, compute_s: float, batch_size: int) -> None:
        rtfx = audio_s / max(compute_s, 1e-6)
        self.rtfx_ewma = rtfx if self.rtfx_ewma is None else 0.8 * self.rtfx_ewma + 0.2 * rtfx
        self.batch_sizes.append(batch_size)
        del self.batch_sizes[:-1000]


LIVE = ItemOptions()  # a live request with timestamps: the default item


class Batcher:
    """The per-worker scheduler. Create, `start()` inside the event loop, `admit()` + `submit()` per
    request, `release()` each ticket, `drain()` at shutdown."""

    def __init__(
        self,
        engine: Engine,
        gpu: GpuArbiter,
        config: BatcherConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        engine: runs one padded batch on the device (`Engine.transcribe`); called only on the GPU thread.
        gpu: the worker's GPU thread and its arbiter.
        config: limits.
        clock: monotonic seconds (tests may inject one).
        """
        self.engine = engine
        self.gpu = gpu
        self.config = config
        self.clock = clock
        self.stats = BatcherStats()
        self._waiting: list[_Item] = []  # arrival order
        self._wake = asyncio.Event()
        self._tickets = 0
        self._running_audio_s = 0.0
        self._running_items = 0
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    # --- admission -----------------------------------------------------------------------------------

    @property
    def queued_requests(self) -> int:
        """Admitted requests not yet answered (uploading, decoding, waiting or running)."""
        return self._tickets

    @property
    def waiting_items(self) -> int:
        """Items (requests, or chunks of long ones) in the queue, not yet in a batch."""
        return len(self._waiting)

    @property
    def queued_audio_s(self) -> float:
        """Audio seconds waiting for or in the GPU."""
        return sum(i.duration_s for i in self._waiting) + self._running_audio_s

    def _publish(self) -> None:
        """This worker's queue gauges (parakeet_requests_waiting/running, queue audio, backlog seconds)."""
        metrics.REQUESTS_RUNNING.set(self._running_items)
        metrics.REQUESTS_WAITING.set(max(0, self._tickets - self._running_items))
        queued_s = self.queued_audio_s
        metrics.QUEUE_AUDIO.set(queued_s)
        metrics.BACKLOG.set(queued_s / (self.stats.rtfx_ewma or 1.0))

    def retry_after_s(self) -> int:
        """Seconds until the work ahead is done: queued audio / measured RTFx, at least 1, at most 120."""
        rtfx = self.stats.rtfx_ewma or 1.0
        ahead_s = self.queued_audio_s / rtfx + self.config.max_wait_ms / 1000
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(ahead_s))))

    def admit(self, *, reserved: bool = False) -> Ticket:
        """Reserve a place for a request whose upload has not been read yet.

        Args:
            reserved: the request was admitted earlier in another form (the utterance of an open live stream,
                which was admitted at connect): no limit applies, not even shutdown (its stream is finalizing).

        Raises:
            ShuttingDown: draining for shutdown.
            Overloaded: `max_queue_requests` admitted requests are unanswered, or `max_queue_audio_s` of
                audio is waiting; carries `retry_after_s`.
        """
        if not reserved:
            self.check_admission()
        self._tickets += 1
        self._idle.clear()
        self._publish()
        return Ticket()

    def check_admission(self) -> None:
        """Raise what `admit()` would raise now, without taking a place (a request about to upload its body
        is refused at once when the queue is already full, and costs the client no upload).

        Raises:
            ShuttingDown, Overloaded: as `admit()`.
        """
        if not self._accepting:
            raise ShuttingDown("the worker is shutting down and takes no new requests; retry on another worker")
        cfg = self.config
        if self._tickets >= cfg.max_queue_requests:
            raise Overloaded(
                f"server busy: {self._tickets} requests queued, the limit is {cfg.max_queue_requests}",
                retry_after_s=self.retry_after_s(),
            )
        if self.queued_audio_s >= cfg.max_queue_audio_s:
            raise Overloaded(
                f"server busy: {self.queued_audio_s:.0f} s of audio queued, the limit is {cfg.max_queue_audio_s:g} s",
                retry_after_s=self.retry_after_s(),
            )

    def release(self, ticket: Ticket) -> None:
        """Give the ticket's place back (idempotent)."""
        if ticket.released:
            return
        ticket.released = True
        self._tickets -= 1
        if self._tickets == 0:
            self._idle.set()
        self._wake.set()  # a batch waiting for this request to arrive need not wait any longer
        self._publish()

    # --- submission ----------------------------------------------------------------------------------

    async def submit(self, ticket: Ticket, waveform: Waveform, options: ItemOptions = LIVE) -> ItemResult:
        """Queue one decoded waveform and wait for its transcript.

        Args:
            ticket: from `admit()` (several submits may share one: the chunks of a long file).
            waveform: float32 mono 16 kHz, shape [T], T >= 1.
            options: what it asks of the engine and its lane (`ItemOptions`; items of any options share batches).

        Raises:
            DeadlineExceeded: not started within `request_timeout_s` of queueing (dropped before the GPU).
            InferenceError: the engine failed on this request's batch.
            asyncio.CancelledError: the caller was cancelled (e.g. client gone); the item is dropped.
        """
        loop = asyncio.get_running_loop()
        now = self.clock()
        # The deadline bounds the wait in the queue, from this item's own arrival there (a long file's later
        # chunks arrive later; its upload and decoding do not count).
        item = _Item(ticket, waveform, options, now, now + self.config.request_timeout_s, loop.create_future())
        self._waiting.append(item)
        self._publish()
        self._wake.set()
        timeout = self.config.request_timeout_s
        try:
            # Shield: a timeout here must not cancel a batch already running; the scheduler skips done futures.
            return await asyncio.wait_for(asyncio.shield(item.future), timeout=timeout + 0.05)
        except TimeoutError:
            if item.started:
                return await item.future
            item.future.cancel()
            raise self._deadline_error() from None
        except asyncio.CancelledError:
            item.future.cancel()  # the scheduler drops it if it has not started
            raise

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"request waited longer than the limit of {self.config.request_timeout_s:g} s in the queue",
            retry_after_s=self.retry_after_s(),
        )

    # --- the scheduler -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests, wait up to `timeout_s` for admitted ones to be answered, stop the loop.
        Returns True if everything admitted was answered."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            drained = True
        except TimeoutError:
            drained = False
        if self._task is not None:
            self._task.cancel()
        return drained

    def stop_accepting(self) -> None:
        """Refuse new requests from now on (503); admitted ones are still served."""
        self._accepting = False

    async def _loop(self) -> None:
        """Form and run batches until cancelled. Nothing a batch does can end this loop: `_run` fails the
        batch's own requests on any exception, and a fault in the scheduling itself is logged and survived."""
        while True:
            try:
                await self._wake.wait()
                self._wake.clear()
                self._purge()
                if not self._waiting:
                    continue
                await self._wait_for_batch()
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch scheduler fault; carrying on")
            if self._waiting:
                self._wake.set()

    async def _wait_for_batch(self) -> None:
        """With the GPU idle, wait for the batch to fill only while other admitted requests are still on their
        way (uploading or decoding) and at most until `max_wait_ms` after the oldest item arrived: waiting
        when nothing else can arrive only adds latency. Under load, requests that arrive while a batch runs
        wait in the queue anyway and go together into the next one."""
        while not self._full() and self._more_on_the_way():
            remaining = self._waiting[0].enqueued_at + self.config.max_wait_ms / 1000 - self.clock()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            self._purge()
            if not self._waiting:
                return

    def _more_on_the_way(self) -> bool:
        """Admitted requests with nothing in the queue yet: they may still join this batch."""
        return self._tickets > len({id(i.ticket) for i in self._waiting})

    def _full(self) -> bool:
        cfg = self.config
        if len(self._waiting) >= cfg.max_batch_size:
            return True
        longest = max(i.duration_s for i in self._waiting)
        return len(self._waiting) * longest >= cfg.max_batch_audio_s

    def _purge(self) -> None:
        """Drop cancelled items (client gone) and fail expired ones, before they reach the GPU."""
        now = self.clock()
        keep = []
        for item in self._waiting:
            if item.future.done():
                self.stats.cancelled += 1
            elif now > item.deadline:
                self.stats.expired += 1
                item.future.set_exception(self._deadline_error())
            else:
                keep.append(item)
        self._waiting = keep

    def _take_batch(self) -> list[_Item]:
        """The next batch (parakeet.pipeline.batch_policy), taken out of the queue."""
        self._purge()
        if not self._waiting:
            return []
        anchor = next((n for n, i in enumerate(self._waiting) if i.options.lane == "final"), None)
        if anchor is None:  # the oldest live item, else the oldest job's
            anchor = next((n for n, i in enumerate(self._waiting) if i.options.lane != "background"), 0)
        lengths = [len(i.waveform) for i in self._waiting]
        cfg = self.config
        chosen = nearest_in_length(lengths, anchor, cfg.max_batch_size, int(cfg.max_batch_audio_s * SAMPLE_RATE_HZ))
        batch = [self._waiting[n] for n in chosen]
        taken = set(chosen)
        self._waiting = [i for n, i in enumerate(self._waiting) if n not in taken]
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        """Run one batch on the GPU thread and answer each of its requests; any failure, including an engine
        result of the wrong length, fails exactly this batch's requests with InferenceError."""
        started = self.clock()
        for item in batch:
            item.started = True
        waveforms = [i.waveform for i in batch]
        audio_s = sum(len(w) for w in waveforms) / SAMPLE_RATE_HZ
        self._running_audio_s = audio_s
        self._running_items = len(batch)
        self._publish()
        try:
            flags = [i.options.timestamps for i in batch]
            conf = [i.options.confidence for i in batch]
            phrases = [i.options.keywords for i in batch]
            transcripts, compute_ms = await self.gpu.run("batch", self._run_split, waveforms, flags, conf, phrases)
            if len(transcripts) != len(batch):
                raise RuntimeError(f"the engine returned {len(transcripts)} transcripts for a batch of {len(batch)}")
        except Exception as exc:
            self.stats.failed_batches += 1
            log.error("batch of %d failed: %s: %s", len(batch), type(exc).__name__, exc, exc_info=exc)
            for item in batch:
                if not item.future.done():
                    if isinstance(exc, DeviceOutOfMemory):  # even alone: 503, the request may fit later
                        error: Exception = DeviceOutOfMemory(
                            f"the device ran out of memory on this request alone ({exc.message})"
                        )
                    else:
                        error = InferenceError("inference failed for this request's batch")
                    error.__cause__ = exc
                    item.future.set_exception(error)
            return
        finally:
            self._running_audio_s = 0.0
            self._running_items = 0
            self._publish()
        self.stats.batches += 1
        self.stats.observe(audio_s, compute_ms / 1000, len(batch))
        queue_ms = [(started - i.enqueued_at) * 1000 for i in batch]
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_COMPUTE.observe(compute_ms / 1000)
        for q_ms in queue_ms:
            metrics.QUEUE_WAIT.observe(q_ms / 1000)
        for item, transcript, q_ms in zip(batch, transcripts, queue_ms, strict=True):
            if not item.future.done():
                item.future.set_result(ItemResult(transcript, q_ms, compute_ms, len(batch)))
        padded_s = len(batch) * max(len(w) for w in waveforms) / SAMPLE_RATE_HZ
        log.info(
            "batch n=%d audio=%.1fs padded=%.1fs queue_ms=%.0f..%.0f compute_ms=%.0f",
            len(batch), audio_s, padded_s, min(queue_ms), max(queue_ms), compute_ms,
        )  # fmt: skip

    def _run_split(
        self,
        waveforms: list[Waveform],
        timestamps: list[bool],
        confidence: list[bool],
        keywords: list[KeyPhrases | None],
    ) -> tuple[list[Transcript], float]:
        """On the GPU thread: run the batch; on device OOM split it in halves and retry each."""
        try:
            out = self.engine.transcribe(
                waveforms, timestamps, confidence if any(confidence) else None, keywords if any(keywords) else None
            )
            return list(out.transcripts), out.compute_ms
        except DeviceOutOfMemory:
            if len(waveforms) == 1:
                raise
            self.stats.oom_splits += 1
            mid = len(waveforms) // 2
            log.warning("device out of memory on a batch of %d; splitting into %d + %d", len(waveforms), mid,
                        len(waveforms) - mid)  # fmt: skip
            first, ms1 = self._run_split(waveforms[:mid], timestamps[:mid], confidence[:mid], keywords[:mid])
            second, ms2 = self._run_split(waveforms[mid:], timestamps[mid:], confidence[mid:], keywords[mid:])
            return first + second, ms1 + ms2
