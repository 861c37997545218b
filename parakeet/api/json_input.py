"""JSON requests to `POST /transcribe`: audio as base64 or as a URL, for callers that cannot send multipart
(serverless handlers, queue workers). README "JSON and URL input".

Body: `{"audio_base64": "...", "timestamps": true}` or `{"audio_url": "https://...", ...}`; serverless callers
wrap the same fields as `{"input": {...}}` and may say `timestamp`; `include_timestamps` is accepted too. Exactly
one of `audio_base64` / `audio_url`; unknown fields are refused with 400 naming them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from parakeet.core import errors
from parakeet.core.keywords import KeyPhrases, parse_key_phrases
from parakeet.pipeline.fetch import UrlPolicy, fetch_audio


class PhraseItem(BaseModel):
    """One key phrase with its own weight (`{"phrase": "Anna Kowalski", "weight": 2}`)."""

    model_config = ConfigDict(extra="forbid")

    phrase: str
    weight: float | None = None


class AudioRequest(BaseModel):
    """The JSON body (or its `input` object)."""

    model_config = ConfigDict(extra="forbid")

    audio_base64: str | None = None
    audio_url: str | None = None
    timestamps: bool | None = None
    timestamp: bool | None = None  # serverless handlers' name
    include_timestamps: bool | None = None  # other servers' name
    confidence: bool | None = None
    diarize: bool | None = None
    keywords: Any = None  # phrases to boost: a comma-separated string, or a list of strings and PhraseItems (_keywords)
    keyword_weight: float | None = None


@dataclass(frozen=True)
class JsonOptions:
    """The field the audio came in (errors about the audio name it), and the options."""

    field: str
    timestamps: bool
    confidence: bool = False
    keywords: KeyPhrases | None = None
    diarize: bool = False
    extras: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # the caller's own fields (`extra_fields`), as sent


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
) -> tuple[bytes, JsonOptions]:
    """The audio bytes and options of a JSON request (the body's size is already capped by the upload limit);
    `extra_fields`: fields the caller reads itself (in `JsonOptions.extras`, unvalidated).

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
        req = AudioRequest.model_validate(doc)
    except ValidationError as exc:
        raise _describe(exc) from None
    if (req.audio_base64 is None) == (req.audio_url is None):
        which = "both" if req.audio_base64 is not None else "neither"
        raise errors.BadRequest(f"send exactly one of audio_base64 and audio_url (got {which})", param="audio_base64")
    timestamps = bool(req.timestamps or req.timestamp or req.include_timestamps)
    keywords = _keywords(req)
    if req.audio_base64 is not None:
        options = JsonOptions("audio_base64", timestamps, bool(req.confidence), keywords, bool(req.diarize), extras)
        return decode_base64(req.audio_base64, max_bytes), options
    assert req.audio_url is not None
    options = JsonOptions("audio_url", timestamps, bool(req.confidence), keywords, bool(req.diarize), extras)
    return await fetch_audio(req.audio_url, policy, max_bytes), options


def _keywords(req: AudioRequest) -> KeyPhrases | None:
    """`keywords` as a string (a comma list), a list of strings (each may be a comma list) or of `PhraseItem`s (a
    phrase with a comma stays one phrase), with `keyword_weight`. NeMo boosts a request's list with one weight, so
    the weights given must agree.

    Raises:
        BadRequest: weights that differ (param `keywords`), or as `parse_key_phrases`.
    """
    raw = [req.keywords] if isinstance(req.keywords, str) else req.keywords if req.keywords is not None else []
    if not isinstance(raw, list):
        raise errors.BadRequest("'keywords' must be a string or a list", param="keywords")
    values, weights = [], set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            values.append(item)
            continue
        try:
            phrase = PhraseItem.model_validate(item)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem.get("loc", ()))
            what = "unknown field" if problem.get("type") == "extra_forbidden" else problem["msg"]
            raise errors.BadRequest(
                f'keywords[{i}] must be a string or {{"phrase", "weight"}}: {what}{f" ({where})" if where else ""}',
                param="keywords",
            ) from None
        values.append(phrase.phrase.replace(",", " "))
        if phrase.weight is not None:
            weights.add(phrase.weight)
    if req.keyword_weight is not None:
        weights.add(req.keyword_weight)
    if len(weights) > 1:
        listed = ", ".join(f"{w:g}" for w in sorted(weights))
        raise errors.BadRequest(
            f"'keywords' gives different weights ({listed}); NeMo boosts a request's phrases with one weight: send "
            "keyword_weight, or the same weight on every phrase",
            param="keywords",
        )
    return parse_key_phrases(values, weights.pop() if weights else None)
