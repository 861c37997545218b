"""Admission where the subject is the socket or the process (a real uvicorn worker on loopback, fake engine): a full
queue answers 429 before the upload is read, an API key is checked before the body is read, a client that
disconnects has its request dropped before the engine, and SIGTERM drains what was admitted, then exits. Orderings
are reached by polling the server's /health and the fake engine's batch log; bounded in count and time."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from typing import Any

import httpx
import pytest

from helpers import Serve, ServerProcess, until, wav_of


async def post_async(client: httpx.AsyncClient, url: str, tag: int, duration_s: float = 1.0) -> httpx.Response:
    return await client.post(f"{url}/transcribe", files={"file": ("a.wav", wav_of(tag, duration_s))})


async def health(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return dict((await client.get(f"{url}/health")).json())


async def read_http_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response (status line, headers and a Content-Length body) from a raw connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    return head + await reader.readexactly(length)


async def announce(url: str, content_length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request that announces a body of `content_length` bytes and sends none of it."""
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(
        b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % content_length
    )
    await writer.drain()
    return reader, writer


SLOW_QUEUE_2 = Serve({"FAKE_DELAY_S": "1.0", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_MAX_QUEUE_REQUESTS": "2"})


@pytest.mark.parametrize("server", [SLOW_QUEUE_2], indirect=True)
def test_admission_queue_full_is_429_before_the_upload_is_read(server: ServerProcess) -> None:
    async def main() -> tuple[list[httpx.Response], str]:
        async with httpx.AsyncClient(timeout=30) as client:
            busy = [asyncio.ensure_future(post_async(client, server.url, i)) for i in range(2)]
            await until(lambda: _queued(client, server.url, 2))
            # A third request announces 50 MB and sends none of it: the 429 must come anyway.
            reader, writer = await announce(server.url, 50_000_000)
            # Bounded: without the 429 the server would wait for the 50 MB forever.
            reply = (await asyncio.wait_for(read_http_response(reader), 30)).decode()
            writer.close()
            return list(await asyncio.gather(*busy)), reply

    busy, reply = asyncio.run(main())
    assert [r.status_code for r in busy] == [200, 200]
    assert reply.startswith("HTTP/1.1 429 "), reply
    retry_after = int(re.search(r"(?im)^retry-after: (\d+)\r$", reply).group(1))  # type: ignore[union-attr]
    assert 1 <= retry_after <= 120
    assert '"code":"queue_full"' in reply and "the limit is 2" in reply


async def _queued(client: httpx.AsyncClient, url: str, n: int) -> bool:
    return (await health(client, url))["queued_requests"] == n


async def _admitted(client: httpx.AsyncClient, url: str, n: int) -> bool:
    body = await health(client, url)
    return bool(body["queued_requests"] + body["requests_served"] == n)


@pytest.mark.parametrize("server", [Serve({"PARAKEET_API_KEYS": "k-one"})], indirect=True)
def test_access_401_comes_before_the_body_is_read(server: ServerProcess) -> None:
    """Announce 500 MB and send none of it: the 401 must come anyway (bounded: without it, the server would wait for
    the body and the read below would time out)."""

    async def main() -> str:
        reader, writer = await announce(server.url, 500_000_000)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        writer.close()
        return head.decode()

    head = asyncio.run(main())
    assert head.startswith("HTTP/1.1 401 "), head
    assert re.search(r"(?im)^www-authenticate: Bearer\r$", head)


@pytest.mark.parametrize("server", [Serve({"FAKE_DELAY_S": "1.0", "PARAKEET_MAX_BATCH_SIZE": "1"})], indirect=True)
def test_admission_request_of_a_client_that_left_never_reaches_the_engine(server: ServerProcess) -> None:
    async def main() -> tuple[httpx.Response, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.ensure_future(post_async(client, server.url, 1))
            await until(lambda: server.fake_batches() == [[1]])  # on the (slow) engine
            async with httpx.AsyncClient(timeout=0.3) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await post_async(impatient, server.url, 2)  # gives up, closes the connection
            answered = await first
            after = await until(lambda: _dropped(client, server.url))  # the batcher dropped it before the GPU
            return answered, after

    first, after = asyncio.run(main())
    assert first.status_code == 200
    assert server.fake_batches() == [[1]]
    assert "client_closed_request" in server.log()
    assert after["dropped_requests"] == 1 and after["batches"] == 1


async def _dropped(client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    body = await health(client, url)
    return body if body["dropped_requests"] == 1 else None


@pytest.mark.parametrize(
    "server",
    [Serve({"FAKE_DELAY_S": "0.3", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_MAX_WAIT_MS": "0"})],
    indirect=True,
)
def test_admission_sigterm_drains_admitted_requests_then_exits(server: ServerProcess) -> None:
    async def main() -> list[Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.ensure_future(post_async(client, server.url, i)) for i in range(5)]
            await until(lambda: _admitted(client, server.url, 5))  # all five admitted (answered or not yet)
            server.proc.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    responses = asyncio.run(main())
    assert [getattr(r, "status_code", r) for r in responses] == [200] * 5
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert [r.json()["text"] for r in responses] == [f"{i} 16000" for i in range(5)]  # each ran, its own answer
    with pytest.raises((httpx.ConnectError, ConnectionRefusedError)):
        host, port = server.url.removeprefix("http://").split(":")
        socket.create_connection((host, int(port)), timeout=2).close()
        httpx.get(f"{server.url}/health", timeout=2)
