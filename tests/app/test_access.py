"""API keys and CORS, in-process: 401 (error table shape, WWW-Authenticate), keys from the environment or a file,
compared in constant time, probes open, the official SDK's AuthenticationError; CORS headers only when origins are
configured. (401 before the body is read, a socket matter: tests/e2e/test_admission_e2e.py.)"""

from __future__ import annotations

import hmac
from pathlib import Path

import httpx
import openai
import pytest

from parakeet.core.errors import InvalidSettings
from parakeet.core.settings import Settings

from fakes import FakeEngine
from helpers import app_client, run, wav_of

KEYS = {"api_keys": "k-one, k-two"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_access_keys_are_required_and_checked() -> None:
    engine = FakeEngine()

    async def main() -> dict[str, httpx.Response]:
        async with app_client(engine, **KEYS) as client:
            files = {"file": ("a.wav", wav_of(3))}
            return {
                "none": await client.post("/transcribe", files=files),
                "wrong": await client.post("/transcribe", files=files, headers=bearer("k-three")),
                "basic": await client.post("/transcribe", files=files, headers={"Authorization": "Basic k-one"}),
                "one": await client.post("/transcribe", files=files, headers=bearer("k-one")),
                "two": await client.get("/v1/models", headers=bearer("k-two")),
                "models": await client.get("/v1/models"),
            }

    r = run(main())
    for name in ("none", "wrong", "basic", "models"):
        assert r[name].status_code == 401, name
        assert r[name].headers["www-authenticate"] == "Bearer"
        err = r[name].json()["error"]
        assert err["code"] == "invalid_api_key" and "Authorization: Bearer" in err["message"]
        assert r[name].headers["x-request-id"]
    assert r["one"].status_code == 200 and r["one"].json()["text"] == "3 16000"
    assert r["two"].status_code == 200
    assert engine.batches == [[3]]  # refused requests never reached the engine


def test_access_probes_and_health_stay_open() -> None:
    async def main() -> list[int]:
        async with app_client(FakeEngine(), **KEYS) as client:
            return [(await client.get(p)).status_code for p in ("/health", "/health/live", "/readyz", "/healthz")]

    assert run(main()) == [200, 200, 200, 200]


def test_access_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)

    async def main() -> int:
        async with app_client(FakeEngine(), **KEYS) as client:
            calls.clear()
            return (await client.get("/v1/models", headers=bearer("k-one"))).status_code

    assert run(main()) == 200
    assert calls == [(b"k-one", b"k-one"), (b"k-one", b"k-two")]  # every key, even after a match


def test_access_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nk-file-1\n\n  k-file-2  \n")
    assert Settings(api_keys=str(keys)).api_key_list() == ["k-file-1", "k-file-2"]
    with pytest.raises(InvalidSettings, match="cannot be read"):
        Settings(api_keys=str(tmp_path / "missing")).api_key_list()
    keys.write_text("# nothing\n")
    with pytest.raises(InvalidSettings, match="holds no key"):
        Settings(api_keys=str(keys)).api_key_list()


def test_access_openai_sdk_sends_the_key_and_raises_authentication_error() -> None:
    async def main() -> tuple[str, openai.AuthenticationError]:
        async with app_client(FakeEngine(), **KEYS) as http:
            good = openai.AsyncOpenAI(base_url="http://parakeet.test/v1", api_key="k-two", http_client=http)
            text = (await good.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_of(4)))).text
            bad = openai.AsyncOpenAI(
                base_url="http://parakeet.test/v1", api_key="nope", max_retries=0, http_client=http
            )
            with pytest.raises(openai.AuthenticationError) as info:
                await bad.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_of(4)))
            return text, info.value

    text, error = run(main())
    assert text == "4 16000"
    assert error.status_code == 401 and error.body["code"] == "invalid_api_key"  # type: ignore[index]


def test_access_cors_only_when_configured() -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}

    async def main(**settings: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app_client(FakeEngine(), **settings) as client:
            return (
                await client.options("/v1/audio/transcriptions", headers=preflight),
                await client.get("/health", headers={"Origin": "https://app.example.com"}),
                await client.get("/health", headers={"Origin": "https://evil.example.net"}),
            )

    off = run(main())
    assert all("access-control-allow-origin" not in r.headers for r in off)
    pre, allowed, other = run(main(cors_origins="https://app.example.com", **KEYS))
    assert pre.status_code == 200  # a preflight needs no key
    assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
