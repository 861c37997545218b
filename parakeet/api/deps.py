"""Typed access to the worker from a route: `worker: WorkerDep` instead of `request.app.state.worker`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from parakeet.pipeline.worker import Worker


async def get_worker(request: Request) -> Worker:  # async: FastAPI would run a sync one on a thread
    """The Worker that `server.create_app`'s lifespan put on `app.state.worker`.

    Raises:
        RuntimeError: the app was served without its lifespan (a wiring bug, answered 500).
    """
    worker = getattr(request.app.state, "worker", None)
    if not isinstance(worker, Worker):
        raise RuntimeError("app.state.worker is not set: serve the app with its lifespan")
    return worker


WorkerDep = Annotated[Worker, Depends(get_worker)]
