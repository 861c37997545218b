"""Every row of the README's error table, in-process against the digits app (conftest.digits_client): exact status,
the one JSON error shape, a message naming the limit and the value, and an app that keeps serving afterwards. The 500
and out-of-memory rows use the in-process app with a failing fake engine; the row that is about the socket (413
before the body of a declared 1 GB is read) is in tests/e2e/test_hostile_clients.py."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.support import speech

from fakes import FakeEngine, tag_of
from helpers import DIGITS_APP_SETTINGS, app_client, run
from media import wav_bytes

MAX_UPLOAD = DIGITS_APP_SETTINGS["max_upload_bytes"]


def assert_error(r: httpx.Response, status: int, code: str, *fragments: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], body
    assert "Traceback" not in r.text and "/work/" not in r.text and ".py" not in r.text
    return body["error"]


def post(client: httpx.Client, data: bytes, filename: str = "clip.wav", **kw: Any) -> httpx.Response:
    return client.post("/transcribe", files={"file": (filename, data)}, **kw)


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    return wav_bytes(speech.speak("nine one", "en-us", 160))


@pytest.fixture
def client(digits_client: httpx.Client, speech_wav: bytes) -> Iterator[httpx.Client]:
    """The digits app; after every bad request it still transcribes."""
    yield digits_client
    r = post(digits_client, speech_wav)
    assert r.status_code == 200 and r.json()["text"] == "nine one", r.text


def test_error_no_file_part(client: httpx.Client) -> None:
    r = client.post("/transcribe", data={"model": "x"})
    err = assert_error(r, 400, "invalid_request", "missing form field 'file'")
    assert err["param"] == "file" and err["type"] == "invalid_request_error"


def test_error_file_as_text_field(client: httpx.Client) -> None:
    r = client.post("/transcribe", data={"file": "not a file"})
    assert_error(r, 400, "invalid_request", "must be a file upload")


def test_error_not_multipart(client: httpx.Client, speech_wav: bytes) -> None:
    r = client.post("/transcribe", content=speech_wav, headers={"content-type": "audio/wav"})
    assert_error(r, 400, "invalid_request", "multipart/form-data")


def test_error_zero_byte_file(client: httpx.Client) -> None:
    assert_error(post(client, b""), 400, "empty_audio", "empty (0 bytes)")


def test_error_wav_header_without_samples(client: httpx.Client) -> None:
    assert_error(post(client, wav_bytes(np.zeros(0, dtype=np.float32))), 400, "empty_audio", "no samples")


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (np.random.default_rng(5).bytes(20000), "noise.wav"),
        (b"just some text\n" * 100, "notes.mp3"),
        (b"<html><body>" + b"<p>hi</p>" * 200 + b"</body></html>", "page.wav"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(3000), "image.wav"),
        (b"RIFF\x24\x00\x00\x00WAVEfm", "cut-in-header.wav"),
    ],
    ids=["random-bytes", "text", "html", "png", "wav-cut-in-header"],
)
def test_error_not_audio_is_415(client: httpx.Client, data: bytes, name: str) -> None:
    assert_error(post(client, data, name), 415, "unsupported_audio", "not audio in a supported format")


def test_error_wav_data_shorter_than_header_says_is_served(client: httpx.Client) -> None:
    full = wav_bytes(speech.speak("five five five five", "en-us", 160))
    r = post(client, full[: len(full) // 2])
    assert r.status_code == 200
    assert 0 < r.json()["duration_sec"] < len(full) / 2 / 32000 + 0.01


def test_error_chunked_body_over_cap_is_413(client: httpx.Client) -> None:
    boundary = b"xyzzy"
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'

    def body() -> Iterator[bytes]:
        yield head
        chunk = bytes(256 * 1024)
        for _ in range(MAX_UPLOAD // len(chunk) + 8):
            yield chunk
        yield b"\r\n--" + boundary + b"--\r\n"

    try:
        r = client.post(
            "/transcribe",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"},
        )
    except httpx.HTTPError as exc:
        pytest.fail(f"no answer: {exc}")
    assert_error(r, 413, "upload_too_large", f"exceeds the upload limit of {MAX_UPLOAD} bytes")


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_error_small_file_that_decodes_to_hours_is_413(client: httpx.Client, fmt: str) -> None:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 8000, 1, format=fmt, subtype="PCM_16" if fmt == "FLAC" else "VORBIS") as f:
        minute = np.zeros(8000 * 60, dtype=np.float32)
        for _ in range(20 if fmt == "FLAC" else 3):
            f.write(minute)
    data = buf.getvalue()
    assert len(data) < 1_000_000
    r = post(client, data, f"bomb.{fmt.lower()}")
    assert_error(r, 413, "audio_too_long", "longer than the limit of 60 s", "decoding stopped after 61.0 s")


def _forged_wav(rate: int, channels: int = 1) -> bytes:
    data = bytearray(wav_bytes(np.zeros(1600, dtype=np.float32)))
    struct.pack_into("<H", data, 22, channels)
    struct.pack_into("<I", data, 24, rate)
    return bytes(data)


@pytest.mark.parametrize(
    ("rate", "status", "code", "fragment"),
    [
        (0, 415, "unsupported_audio", "not audio in a supported format"),  # libsndfile and FFmpeg refuse the header
        (1, 400, "invalid_audio", "sample rate 1 Hz is outside the supported range 8000-96000 Hz"),
        (655350, 400, "invalid_audio", "sample rate 655350 Hz is outside the supported range 8000-96000 Hz"),
    ],
)
def test_error_forged_header_sample_rate_is_refused(
    client: httpx.Client, rate: int, status: int, code: str, fragment: str
) -> None:
    assert_error(post(client, _forged_wav(rate)), status, code, fragment)


def test_error_real_but_unsupported_rate_names_range_and_value(client: httpx.Client) -> None:
    r = post(client, wav_bytes(np.zeros(4000, dtype=np.float32), 4000))
    assert_error(r, 400, "invalid_audio", "sample rate 4000 Hz", "8000-96000 Hz")


def test_error_zero_channels_is_415(client: httpx.Client) -> None:
    # libsndfile refuses a 0-channel header; FFmpeg opens it but decodes no sample
    assert_error(post(client, _forged_wav(16000, 0)), 415, "unsupported_audio", "no samples could be decoded")


def test_error_nine_channels(client: httpx.Client) -> None:
    r = post(client, wav_bytes(np.zeros((1600, 9), dtype=np.float32)))
    assert_error(r, 400, "invalid_audio", "9 audio channels", "1-8")


def test_error_nan_samples_are_400(client: httpx.Client) -> None:
    w = np.zeros(16000, dtype=np.float32)
    w[100] = np.nan
    assert_error(post(client, wav_bytes(w, 16000, "FLOAT")), 400, "invalid_audio", "NaN or infinite")


def test_error_10ms_clip_is_200_with_empty_text(client: httpx.Client) -> None:
    r = post(client, wav_bytes(np.full(160, 0.01, dtype=np.float32)))
    assert r.status_code == 200 and r.json()["text"] == "" and r.json()["duration_sec"] == 0.01


def test_error_30s_of_silence_is_200_with_empty_text(client: httpx.Client) -> None:
    r = post(client, wav_bytes(np.zeros(16000 * 30, dtype=np.float32)))
    assert r.status_code == 200 and r.json()["text"] == "" and r.json()["duration_sec"] == 30.0


@pytest.mark.parametrize("filename", ["../../etc/passwd", "a\x00b.wav", "C:\\x\\..\\..\\y.wav", "é" * 300])
def test_error_hostile_filenames_are_served_and_never_echoed(
    client: httpx.Client, speech_wav: bytes, filename: str
) -> None:
    r = post(client, speech_wav, filename)
    assert r.status_code == 200 and r.json()["text"] == "nine one"
    assert "passwd" not in r.text and "..\\" not in r.text


def test_error_unknown_route_is_404_in_the_same_shape(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")


def test_error_wrong_method_is_405_in_the_same_shape(client: httpx.Client) -> None:
    assert_error(client.get("/transcribe"), 405, "method_not_allowed")


def _multipart(parts: list[bytes], boundary: bytes = b"bnd") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"
    return body, {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


def _field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


@pytest.mark.parametrize(
    "case",
    ["thousands-of-fields", "1MB-part-header", "crlf-flood", "pathological-boundary", "huge-text-field"],
)
def test_error_multipart_abuse_is_400(client: httpx.Client, case: str) -> None:
    if case == "thousands-of-fields":
        body, headers = _multipart([_field(f"f{i}", b"x") for i in range(5000)])
    elif case == "1MB-part-header":
        body, headers = _multipart([b"X-Junk: " + b"a" * (1024 * 1024) + b"\r\n" + _field("file", b"x")])
    elif case == "crlf-flood":
        body, headers = b"\r\n" * 500_000, {"content-type": "multipart/form-data; boundary=bnd"}
    elif case == "pathological-boundary":
        body, headers = _multipart([_field("file", b"-" * 200_000)], boundary=b"-" * 70)
    else:
        body, headers = _multipart([_field("prompt", b"a" * 2_000_000)])
    r = client.post("/transcribe", content=body, headers=headers)
    assert_error(r, 400, "invalid_request")


# --- the 500 row: in-process app, deterministic fake engine ------------------------------------------------


def _wave_of(wav: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(wav), dtype="float32")[0]


def test_error_engine_failure_is_500_with_request_id_and_no_internals(speech_wav: bytes) -> None:
    engine = FakeEngine(fail_tag=tag_of(_wave_of(speech_wav)))

    async def main() -> tuple[httpx.Response, int]:
        async with app_client(engine) as client:
            r = await client.post("/transcribe", files={"file": ("a.wav", speech_wav)})
            return r, (await client.get("/health")).status_code

    r, health_after = run(main())
    err = assert_error(r, 500, "inference_failed")
    rid = r.headers["x-request-id"]
    assert rid in err["message"] and err["type"] == "server_error"
    assert "secret" not in r.text and "illegal memory" not in r.text
    assert engine.batches  # it did reach the engine
    assert health_after == 200  # the worker keeps serving


def test_error_device_out_of_memory_alone_is_503_with_retry_after() -> None:
    async def main() -> httpx.Response:
        async with app_client(FakeEngine(oom_above=0)) as client:
            return await client.post("/transcribe", files={"file": ("a.wav", wav_bytes(np.zeros(16000, np.float32)))})

    r = run(main())
    assert_error(r, 503, "device_out_of_memory", "ran out of memory on this request alone")
    assert int(r.headers["retry-after"]) >= 1
