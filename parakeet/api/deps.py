"""Typed access from a route to what the composition root (server.py) put on `app.state`, as FastAPI dependencies:
`worker: WorkerDep`, `policy: UrlPolicyDep`, `store: JobStoreDep`, `audio: JobAudioDep`, `signer: WebhookSignerDep`.
Routes never read `app.state` themselves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from standardwebhooks.webhooks import Webhook

from parakeet.core import errors
from parakeet.jobs.audio import DatabaseJobAudio, FileJobAudio, JobAudio
from parakeet.jobs.store import JobStore
from parakeet.pipeline.fetch import UrlPolicy
from parakeet.pipeline.worker import Worker


def _state(request: Request, name: str, kinds: type[Any] | tuple[type[Any], ...], missing: str) -> Any:
    """`app.state.<name>`, of one of `kinds`.

    Raises:
        NotReady(`missing`) for the jobs' state (the lifespan opens it), RuntimeError(`missing`) else (wiring).
    """
    value = getattr(request.app.state, name, None)
    if not isinstance(value, kinds):
        raise errors.NotReady(missing) if name.startswith("job_") else RuntimeError(missing)
    return value


async def get_worker(request: Request) -> Worker:  # async: FastAPI would run a sync one on a thread
    """The Worker that `server.create_app`'s lifespan put on `app.state.worker`.

    Raises:
        RuntimeError: the app was served without its lifespan (a wiring bug, answered 500).
    """
    worker: Worker = _state(request, "worker", Worker, "app.state.worker is not set: serve the app with its lifespan")
    return worker


async def get_url_policy(request: Request) -> UrlPolicy:
    """The `audio_url` / `webhook_url` address rules (`app.state.url_policy`, set by `create_app`).

    Raises:
        RuntimeError: not set (a wiring bug, answered 500).
    """
    wiring = "app.state.url_policy is not set: build the app with server.create_app"
    policy: UrlPolicy = _state(request, "url_policy", UrlPolicy, wiring)
    return policy


async def get_job_store(request: Request) -> JobStore:
    """The jobs database (`app.state.job_store`, opened by the lifespan).

    Raises:
        NotReady: not open yet (503).
    """
    store: JobStore = _state(request, "job_store", JobStore, _JOBS_NOT_OPEN)
    return store


async def get_job_audio(request: Request) -> JobAudio:
    """Where jobs' audio is kept (`app.state.job_audio`, beside the jobs database).

    Raises:
        NotReady: the jobs database is not open yet (503).
    """
    audio: JobAudio = _state(request, "job_audio", (FileJobAudio, DatabaseJobAudio), _JOBS_NOT_OPEN)
    return audio


_JOBS_NOT_OPEN = "the jobs database is not open yet; retry shortly"


async def get_webhook_signer(request: Request) -> Webhook | None:
    """Standard Webhooks' signer over PARAKEET_JOBS_WEBHOOK_SECRET (`app.state.job_signer`), None without one."""
    signer = getattr(request.app.state, "job_signer", None)
    return signer if isinstance(signer, Webhook) else None


WorkerDep = Annotated[Worker, Depends(get_worker)]
UrlPolicyDep = Annotated[UrlPolicy, Depends(get_url_policy)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
JobAudioDep = Annotated[JobAudio, Depends(get_job_audio)]
WebhookSignerDep = Annotated[Webhook | None, Depends(get_webhook_signer)]
