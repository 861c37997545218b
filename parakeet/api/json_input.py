"""JSON requests to `POST /transcribe`: audio as base64 or as a URL, for callers that cannot send multipart
(serverless handlers, queue workers). README "JSON and URL input".

Body: `{"audio_base64": "...", "timestamps": true}` or `{"audio_url": "https://...", ...}`; serverless callers
wrap the same fields as `{"input": {...}}`. The options and their aliases are a form's (`parakeet.api.options`).
Exactly one of `audio_base64` / `audio_url`; unknown fields are refused with 400 naming them.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from parakeet.api.options import JsonAudioRequest
from parakeet.core import errors
from parakeet.pipeline.fetch import UrlPolicy, fetch_audio
from parakeet.pipeline.requests import TranscribeOptions


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def decode_base64(value: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64, padding optional, whitespace ignored, with or without a
    `data:<type>;base64,` prefix (RFC 4648 sections 4 and 5; RFC 2397).

    Raises:
        UploadTooLarge: the encoded text alone is longer than `max_bytes` (checked before decoding).
        BadRequest: not base64.
    """
    if len(value) > max_bytes:
        raise errors.UploadTooLarge(
            f"audio_base64 is {len(value)} characters, over the upload limit of {max_bytes} bytes",
            param="audio_base64",
        )
    text = value.strip()
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise errors.BadRequest(
                "a data: URL in audio_base64 must be data:<type>;base64,<data>", param="audio_base64"
            )
    text = "".join(text.split())
    urlsafe = "-" in text or "_" in text
    if urlsafe and ("+" in text or "/" in text):
        raise errors.BadRequest(
            "audio_base64 mixes the standard (+/) and URL-safe (-_) alphabets", param="audio_base64"
        )
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.BadRequest(f"audio_base64 is not valid base64 ({exc})", param="audio_base64") from None


def _describe(exc: ValidationError) -> errors.BadRequest:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or None
    if err.get("type") == "extra_forbidden":
        return errors.BadRequest(
            f"unknown field '{field}' (expected audio_base64 or audio_url, and timestamps)", param=field
        )
    return errors.BadRequest(f"field '{field}': {err['msg']}", param=field)


async def read_json_audio(
    request: Request, policy: UrlPolicy, max_bytes: int, extra_fields: tuple[str, ...] = ()
) -> tuple[bytes, str, TranscribeOptions, dict[str, Any]]:
    """The audio bytes of a JSON request (the body's size is already capped by the upload limit), the field they
    came in (errors about the audio name it), the options (`parakeet.api.options.TranscribeFields`, the same model as
    a form's), and `extra_fields`: fields the caller reads itself, as sent (unvalidated).

    Raises:
        BadRequest: not JSON, not an object, unknown fields, wrong types, both or neither audio field, bad base64.
        UrlRefused, UrlFetchFailed, UrlTimeout, UploadTooLarge: from fetching `audio_url`.
    """
    try:
        doc: Any = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BadRequest(f"the body is not valid JSON ({exc})") from None
    if isinstance(doc, dict) and set(doc) == {"input"} and isinstance(doc["input"], dict):
        doc = doc["input"]
    if not isinstance(doc, dict):
        raise errors.BadRequest("the JSON body must be an object with audio_base64 or audio_url")
    extras = {name: doc.pop(name) for name in extra_fields if name in doc}
    try:
        req = JsonAudioRequest.model_validate(doc)
    except ValidationError as exc:
        raise _describe(exc) from None
    if (req.audio_base64 is None) == (req.audio_url is None):
        which = "both" if req.audio_base64 is not None else "neither"
        raise errors.BadRequest(f"send exactly one of audio_base64 and audio_url (got {which})", param="audio_base64")
    options = req.options()
    if req.audio_base64 is not None:
        return decode_base64(req.audio_base64, max_bytes), "audio_base64", options, extras
    assert req.audio_url is not None
    return await fetch_audio(req.audio_url, policy, max_bytes), "audio_url", options, extras
