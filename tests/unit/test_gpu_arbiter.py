"""parakeet/pipeline/gpu.py: one thread runs every device job, and its policy decides the order: control jobs first,
then offline batches and streaming steps alternating, first come first served within a kind. The jobs record the
order they ran in; a gate holds the thread so that the others queue behind it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from parakeet.pipeline.gpu import GpuArbiter, JobKind

from helpers import until


def run(body: Any) -> Any:
    async def main() -> Any:
        gpu = GpuArbiter()
        gpu.start()
        try:
            return await body(gpu)
        finally:
            await gpu.close()

    return asyncio.run(main())


def test_batches_and_steps_alternate_and_control_jobs_go_first() -> None:
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        if name == "hold":
            gate.wait(30)
        ran.append(name)
        return name

    async def body(gpu: GpuArbiter) -> list[str]:
        holder = asyncio.ensure_future(gpu.run("batch", job, "hold"))
        await until(lambda: gpu.jobs_run["batch"] == 1)  # the thread is busy with it
        order: list[tuple[JobKind, str]] = [("batch", "b1"), ("batch", "b2"), ("step", "s1"), ("step", "s2"),
                                            ("control", "c1")]  # fmt: skip
        waiting = [asyncio.ensure_future(gpu.run(kind, job, name)) for kind, name in order]
        await until(lambda: gpu.waiting == 5)
        gate.set()
        return [await holder, *[await w for w in waiting]]

    results = run(body)
    assert results == ["hold", "b1", "b2", "s1", "s2", "c1"]  # each caller gets its own job's result
    # after the batch that held the thread: the control job, then a step (a batch ran last), then they alternate
    assert ran == ["hold", "c1", "s1", "b1", "s2", "b2"]


def test_a_job_that_raises_fails_only_its_caller() -> None:
    def boom() -> None:
        raise RuntimeError("device fault")

    async def body(gpu: GpuArbiter) -> tuple[str, int]:
        with pytest.raises(RuntimeError, match="device fault"):
            await gpu.run("batch", boom)
        return await gpu.run("step", lambda: "still serving"), gpu.jobs_run["batch"]

    assert run(body) == ("still serving", 1)


def test_a_waiting_job_whose_caller_left_never_runs() -> None:
    gate = threading.Event()
    ran: list[str] = []

    def job(name: str) -> None:
        if name == "hold":
            gate.wait(30)
        ran.append(name)

    async def body(gpu: GpuArbiter) -> None:
        holder = asyncio.ensure_future(gpu.run("batch", job, "hold"))
        await until(lambda: gpu.jobs_run["batch"] == 1)
        gone = asyncio.ensure_future(gpu.run("step", job, "gone"))
        stays = asyncio.ensure_future(gpu.run("step", job, "stays"))
        await until(lambda: gpu.waiting == 2)
        gone.cancel()
        gate.set()
        await holder
        await stays
        with pytest.raises(asyncio.CancelledError):
            await gone

    run(body)
    assert ran == ["hold", "stays"]


def test_a_closed_arbiter_refuses_new_jobs() -> None:
    async def main() -> None:
        gpu = GpuArbiter()
        gpu.start()
        await gpu.close()
        with pytest.raises(RuntimeError, match="not running"):
            await gpu.run("control", lambda: None)

    asyncio.run(main())
