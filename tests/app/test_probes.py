"""Liveness and readiness probes, in-process with the fake engine: live while loading, ready only once the
model is loaded and warm, not ready (503 + Retry-After) while draining; every alias answers the same."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from parakeet.api.deps import get_worker

from fakes import FakeEngine
from helpers import run, running_app

LIVE = ["/health/live", "/healthz", "/v1/health/live"]
READY = ["/health/ready", "/readyz", "/v1/health/ready"]


async def probe_all(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
    return {path: await client.get(path) for path in LIVE + READY}


def test_probes_while_loading_then_ready_then_draining() -> None:
    async def main() -> tuple[dict[str, httpx.Response], ...]:
        async with running_app(FakeEngine(), load_delay_s=1.0, wait_ready=False) as (app, client):
            loading = await probe_all(client)
            for _ in range(200):
                if (await client.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            ready = await probe_all(client)
            app.state.worker.begin_shutdown()  # what SIGTERM does first
            draining = await probe_all(client)
            return loading, ready, draining

    loading, ready, draining = run(main())
    for path in LIVE:
        for phase in (loading, ready, draining):
            r = phase[path]
            assert r.status_code == 200 and r.json()["status"] == "live" and r.json()["object"] == "health.response"
    for path in READY:
        assert loading[path].status_code == 503 and loading[path].json()["status"] == "not_ready"
        assert loading[path].headers["retry-after"] == "10" and "loading" in loading[path].json()["message"]
        assert ready[path].status_code == 200 and ready[path].json()["status"] == "ready"
        assert "retry-after" not in ready[path].headers
        assert draining[path].status_code == 503 and draining[path].json()["status"] == "draining"
        assert draining[path].headers["retry-after"] == "10"


def test_probes_leave_the_health_route_as_it_was() -> None:
    async def main() -> httpx.Response:
        async with running_app(FakeEngine()) as (_, client):
            return await client.get("/health")

    body = run(main()).json()
    assert body["status"] == "ok" and body["ready"] is True and body["device"]["name"] == "fake"


def test_probes_worker_accessor_refuses_an_app_without_its_lifespan() -> None:
    from starlette.requests import Request

    from server import create_app

    app = create_app(on_fatal=pytest.fail)
    request = Request({"type": "http", "app": app, "headers": []})
    with pytest.raises(RuntimeError, match="serve the app with its lifespan"):
        asyncio.run(get_worker(request))


def test_probes_when_the_model_failed_to_load() -> None:
    """In production the worker then exits (code 3); until it does, it is live and never ready."""
    from asgi_lifespan import LifespanManager

    from parakeet.core.errors import ModelLoadError
    from parakeet.core.settings import Settings
    from server import create_app

    class Failing:
        def visible_gpus(self) -> int:
            return 0

        def __call__(self, settings: Settings, gpu_id: int | None) -> FakeEngine:
            raise ModelLoadError("model file not found: /nowhere.nemo")

    fatal: list[str] = []
    app = create_app(Settings(device="cpu"), engine_factory=Failing(), on_fatal=fatal.append)

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://parakeet.test") as client:
                for _ in range(100):
                    if fatal:
                        break
                    await asyncio.sleep(0.05)
                return await client.get("/health/live"), await client.get("/health/ready"), await client.get("/health")

    live, ready, health = run(main())
    assert fatal == ["model file not found: /nowhere.nemo"]
    assert live.status_code == 200 and live.json()["status"] == "live"
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert ready.json()["message"] == "model file not found: /nowhere.nemo"
    assert health.json()["status"] == "failed"
