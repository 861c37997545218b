"""The worker's one GPU thread, and the one rule for what runs on it next.

Everything that touches the device runs on this thread, one job at a time: the model load and warm-up, device
queries, offline batches (parakeet.pipeline.batching) and streaming steps (parakeet.pipeline.stream_scheduler).
This module knows nothing of models or requests: a job is a function and its arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

log = logging.getLogger("parakeet.gpu")

T = TypeVar("T")
JobKind = Literal["control", "step", "batch"]


@dataclass(eq=False)
class _Job:
    kind: JobKind
    call: Callable[[], Any]
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GpuArbiter:
    """Runs device work on one thread and decides the order.

    Policy, when several jobs wait:
    1. `control` jobs (model load, warm-up, device info) go first: they are rare and short.
    2. Between offline batches (`batch`) and streaming steps (`step`), strict alternation: after a batch, a waiting
       step goes next; after a step, a waiting batch. A live stream's partials therefore never wait behind more than
       one offline batch (at most `max_batch_audio_s` of padded audio), and a crowd of streams cannot starve uploads.
    3. Within a kind, first come, first served.
    The batcher and the stream scheduler each have at most one job here at a time (each awaits its result before
    forming the next), so the choice above is made between whole batches, and the batch or step a scheduler submits
    is formed from what was ready when the thread became free.

    Create and `start()` on the event loop; `await run(kind, fn, *args)`; `close()` at shutdown.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._waiting: dict[JobKind, deque[_Job]] = {"control": deque(), "step": deque(), "batch": deque()}
        self._last: JobKind | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.jobs_run: dict[JobKind, int] = {"control": 0, "step": 0, "batch": 0}

    @property
    def waiting(self) -> int:
        """Jobs queued, not yet started."""
        return sum(len(q) for q in self._waiting.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gpu-arbiter")

    async def run(self, kind: JobKind, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the GPU thread when the policy gives it its turn; return its result.

        Raises:
            Whatever `fn` raised. asyncio.CancelledError: the caller was cancelled; a job that has not started is
            dropped, one that has started runs to its end and its result is discarded.
            RuntimeError: the arbiter is closed.
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the GPU thread is not running (GpuArbiter.start() not called, or closed)")
        job = _Job(kind, lambda: fn(*args))
        self._waiting[kind].append(job)
        self._wake.set()
        try:
            result: T = await asyncio.shield(job.future)
            return result
        except asyncio.CancelledError:
            job.future.cancel()  # dropped if still waiting; ignored if running
            raise

    def _next(self) -> _Job | None:
        """The next job by the policy, skipping jobs whose caller left."""
        for queue in self._waiting.values():
            while queue and queue[0].future.done():
                queue.popleft()
        if self._waiting["control"]:
            return self._waiting["control"].popleft()
        order: tuple[JobKind, JobKind] = ("step", "batch") if self._last != "step" else ("batch", "step")
        for kind in order:
            if self._waiting[kind]:
                return self._waiting[kind].popleft()
        return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = self._next()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._last = job.kind
            self.jobs_run[job.kind] += 1
            try:
                result = await loop.run_in_executor(self._executor, job.call)
            except asyncio.CancelledError:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the GPU thread stopped during this job"))
                raise
            except Exception as exc:  # noqa: BLE001 - the job's own failure belongs to its caller
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)

    async def close(self) -> None:
        """Stop taking jobs, fail those still waiting, and wait for the running one to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in self._waiting.values():
            for job in queue:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the worker is shutting down"))
            queue.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
