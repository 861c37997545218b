"""JSON input on POST /transcribe (base64 and URL), the form aliases, and the URL fetcher's SSRF refusals.

Oracles: the multipart upload of the same bytes (the fake engine answers "<tag> <samples>", so equal text means
equal decoded audio; real speech on the digits server), a local HTTP server on 127.0.0.2 (loopback only)."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from parakeet.core.tuning import Tuning

from helpers import app_client, post_wav, run, wav_of

WAV = wav_of(7, 1.5)


async def upload_text(client: httpx.AsyncClient, data: bytes = WAV) -> str:
    r = await client.post("/transcribe", files={"file": ("a.wav", data)})
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


def b64(data: bytes, urlsafe: bool = False) -> str:
    return (base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)).decode()


def test_base64_forms_give_the_upload_text() -> None:
    plain = b64(WAV)
    bodies = [
        {"audio_base64": plain},
        {"audio_base64": b64(WAV, urlsafe=True).rstrip("=")},  # URL-safe, no padding
        {"audio_base64": "data:audio/wav;base64," + plain},
        {"audio_base64": "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76))},  # MIME line breaks
        {"input": {"audio_base64": plain}},  # serverless wrapper
    ]

    async def main() -> tuple[str, list[str]]:
        async with app_client() as client:
            texts = []
            for body in bodies:
                r = await client.post("/transcribe", json=body)
                assert r.status_code == 200, r.text
                texts.append(r.json()["text"])
            return await upload_text(client), texts

    expected, texts = run(main())
    assert texts == [expected] * len(bodies)


def test_json_timestamp_names_and_form_aliases() -> None:
    async def main() -> list[Any]:
        async with app_client() as client:
            return [
                (
                    await client.post("/transcribe", json={"input": {"audio_base64": b64(WAV), "timestamp": True}})
                ).json(),
                (await client.post("/transcribe", json={"audio_base64": b64(WAV), "include_timestamps": True})).json(),
                (await client.post("/transcribe", json={"audio_base64": b64(WAV)})).json(),
                (
                    await client.post(
                        "/transcribe",
                        files={"file": ("a.wav", WAV)},
                        data={"include_timestamps": "true", "should_chunk": "true"},
                    )
                ).json(),  # fmt: skip
                await client.post("/transcribe", files={"file": ("a.wav", WAV)}, data={"should_chunk": "maybe"}),
            ]

    wrapped, aliased, plain, form, bad = run(main())
    assert wrapped["timestamps"]["word"] and aliased["timestamps"]["word"] and form["timestamps"]["word"]
    assert plain["timestamps"] is None
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "should_chunk"


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "words"),
    [
        ('{"audio_base64": ', 400, "invalid_request", None, "not valid JSON"),
        ("[1, 2]", 400, "invalid_request", None, "must be an object"),
        ('{"audio_base64": "AAAA", "language": "en"}', 400, "invalid_request", "language", "unknown field 'language'"),
        (
            '{"audio_base64": "AAAA", "audio_url": "https://example.com/a.wav"}',
            400,
            "invalid_request",
            "audio_base64",
            "got both",
        ),
        ('{"timestamps": true}', 400, "invalid_request", "audio_base64", "got neither"),
        ('{"audio_base64": "not base64!"}', 400, "invalid_request", "audio_base64", "not valid base64"),
        ('{"audio_base64": "ab+c-d=="}', 400, "invalid_request", "audio_base64", "mixes"),
        ('{"audio_base64": "data:audio/wav,AAAA"}', 400, "invalid_request", "audio_base64", "data:<type>;base64"),
        ('{"audio_base64": 12}', 400, "invalid_request", "audio_base64", "field 'audio_base64'"),
        ('{"audio_base64": ""}', 400, "empty_audio", "audio_base64", ""),
        (
            '{"audio_base64": "' + base64.b64encode(b"not audio at all" * 8).decode() + '"}',
            415,
            "unsupported_audio",
            "audio_base64",
            "",
        ),
        ('{"audio_url": "https://example.com/a.wav"}', 400, "url_refused", "audio_url", "PARAKEET_URL_INPUT=true"),
    ],
)
def test_bad_json_bodies_are_400_naming_the_field(
    body: str, status: int, code: str, param: str | None, words: str
) -> None:
    async def main() -> httpx.Response:
        async with app_client() as client:
            return await client.post("/transcribe", content=body, headers={"content-type": "application/json"})

    r = run(main())
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == param and words in error["message"]


def test_json_body_over_the_upload_cap_is_413() -> None:
    async def main() -> httpx.Response:
        async with app_client(max_upload_bytes=64 * 1024) as client:
            return await client.post("/transcribe", json={"audio_base64": "A" * 70_000})

    r = run(main())
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"


def test_base64_gives_the_upload_text_on_real_speech(digits_client: httpx.Client) -> None:
    import io

    import numpy as np
    import soundfile as sf

    from tests.support import speech

    buf = io.BytesIO()
    sf.write(buf, np.concatenate([speech.speak("four two seven one nine")]), 16000, format="WAV", subtype="PCM_16")
    wav = buf.getvalue()
    upload = digits_client.post("/transcribe", files={"file": ("a.wav", wav)}).json()
    body = digits_client.post("/transcribe", json={"audio_base64": b64(wav)}).json()
    assert body["text"] == upload["text"] == "four two seven one nine"


# --- audio_url --------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Any] = {}

    def do_GET(self) -> None:
        action = self.routes.get(self.path)
        if action is None:
            self.send_response(404)
            self.end_headers()
            return
        action(self)

    def log_message(self, *args: Any) -> None:
        pass


def _send(handler: _Handler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "audio/wav")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _redirect(to: str) -> Any:
    def action(handler: _Handler) -> None:
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.end_headers()

    return action


def _slow(handler: _Handler) -> None:
    time.sleep(3)
    _send(handler, WAV)


def _big_unannounced(handler: _Handler) -> None:
    handler.send_response(200)
    handler.end_headers()  # no Content-Length: the cap must hold while streaming
    for _ in range(40):
        handler.wfile.write(b"\0" * 65536)


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    """An HTTP server on 127.0.0.2 (loopback) serving the test WAV, redirects, a slow and a huge answer."""
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Handler)
    base = f"http://127.0.0.2:{server.server_address[1]}"
    _Handler.routes = {
        "/a.wav": lambda h: _send(h, WAV),
        "/redirect": _redirect("/a.wav"),
        "/loop": _redirect("/loop"),
        "/to-loopback": _redirect(f"http://127.0.0.1:{server.server_address[1]}/a.wav"),
        "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
        "/slow": _slow,
        "/big": _big_unannounced,
        "/big-announced": lambda h: _send(h, b"\0" * (2 * 1024 * 1024)),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    server.server_close()


URL_ON = {"url_input": True, "url_allowed_networks": "127.0.0.2/32", "max_upload_bytes": 1024 * 1024,
          "tuning": Tuning(url_timeout_s=1.5)}  # fmt: skip


def post_urls(urls: list[str], **settings: Any) -> tuple[str, list[httpx.Response]]:
    async def main() -> tuple[str, list[httpx.Response]]:
        async with app_client(**settings) as client:
            return await upload_text(client), [await client.post("/transcribe", json={"audio_url": u}) for u in urls]

    return run(main())


def test_url_input_gives_the_upload_text_directly_and_through_a_redirect(origin: str) -> None:
    expected, (direct, redirected) = post_urls([f"{origin}/a.wav", f"{origin}/redirect"], **URL_ON)
    assert direct.status_code == 200 and redirected.status_code == 200, (direct.text, redirected.text)
    assert direct.json()["text"] == redirected.json()["text"] == expected


def test_url_fetch_limits(origin: str) -> None:
    cases = {
        f"{origin}/to-loopback": (400, "url_refused", "127.0.0.1"),
        f"{origin}/to-metadata": (400, "url_refused", "169.254.169.254"),
        f"{origin}/loop": (400, "url_refused", "more than 3 redirects"),
        f"{origin}/slow": (504, "url_timeout", "1.5 s"),
        f"{origin}/big": (413, "upload_too_large", "1048576 bytes"),
        f"{origin}/big-announced": (413, "upload_too_large", "2097152 bytes"),
        f"{origin}/missing": (422, "url_fetch_failed", "HTTP 404"),
    }
    _, responses = post_urls(list(cases), **URL_ON)
    for (url, (status, code, words)), r in zip(cases.items(), responses, strict=True):
        error = r.json()["error"]
        assert (r.status_code, error["code"], error["param"]) == (status, code, "audio_url"), (url, r.text)
        assert words in error["message"], (url, error["message"])


def test_private_addresses_are_refused_with_the_check_on(origin: str) -> None:
    """No allowed networks: loopback, 10.x, link-local metadata, IPv6 loopback, and a name resolving to loopback
    are refused before any connection; so are other schemes and hosts off the allowlist."""
    urls = [
        f"{origin}/a.wav", "http://10.1.2.3/a.wav", "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/a.wav", "http://localhost:9/a.wav", "ftp://example.com/a.wav", "file:///etc/passwd",
    ]  # fmt: skip
    _, responses = post_urls(urls, url_input=True)
    for url, r in zip(urls, responses, strict=True):
        assert r.status_code == 400 and r.json()["error"]["code"] == "url_refused", (url, r.text)
    _, (off_list,) = post_urls([f"{origin}/a.wav"], url_input=True, url_allowed_hosts="media.example.com",
                               url_allowed_networks="127.0.0.2/32")  # fmt: skip
    assert off_list.status_code == 400 and "allowed list" in off_list.json()["error"]["message"]


def test_openapi_shows_every_transcribe_option_for_forms_and_json() -> None:
    """/openapi.json (and so /docs) documents every option of POST /transcribe, from the one options model, for a
    multipart form and a JSON body; the aliases are named."""
    from parakeet.api.options import TIMESTAMP_ALIASES, TranscribeFields
    from server import create_app

    body = create_app(on_fatal=pytest.fail).openapi()["paths"]["/transcribe"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]
    doc = body["application/json"]["schema"]["properties"]
    options = set(TranscribeFields.model_fields)
    assert {"timestamps", "confidence", "diarize", "keywords", "keyword_weight"} <= options
    assert set(form) == options | {"file"} and set(doc) == options | {"audio_base64", "audio_url"}
    assert all(alias in form["timestamps"]["description"] for alias in TIMESTAMP_ALIASES[1:])
    assert all(form[name].get("description") for name in options)


def test_every_timestamps_alias_means_the_same_in_a_form_and_in_json() -> None:
    """One set of aliases (parakeet.api.options.TIMESTAMP_ALIASES) for both bodies."""

    async def main() -> None:
        async with app_client() as client:
            for alias in ("timestamps", "timestamp", "include_timestamps"):
                form = await post_wav(client, 3, **{alias: "true"})
                doc = await client.post("/transcribe", json={"audio_base64": b64(WAV), alias: True})
                assert form.status_code == doc.status_code == 200, (form.text, doc.text)
                assert form.json()["timestamps"] is not None and doc.json()["timestamps"] is not None, alias

    run(main())
