"""The body of a `POST /transcribe`-shaped request, multipart or JSON (base64 or URL): the audio bytes, the
request's `TranscribeOptions`, the field the audio came in, and any extra fields a route takes (`POST /v1/jobs`:
`metadata`, `webhook_url`). One reader for every route that takes these inputs."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from parakeet.api.json_input import is_json, read_json_audio
from parakeet.api.options import fields_of_form
from parakeet.api.uploads import form_file, form_text, multipart_form, read_file
from parakeet.pipeline.fetch import UrlPolicy
from parakeet.pipeline.requests import TranscribeOptions


async def _read_multipart(
    request: Request, extra_fields: tuple[str, ...] = ()
) -> tuple[bytes, TranscribeOptions, dict[str, Any]]:
    async with multipart_form(request) as form:
        part = form_file(form)
        options = fields_of_form(form).options()
        extras = {name: value for name in extra_fields if (value := form_text(form, name)) is not None}
        return await read_file(part), options, extras


async def read_body_with(
    request: Request, policy: UrlPolicy, max_bytes: int, extra_fields: tuple[str, ...]
) -> tuple[bytes, tuple[TranscribeOptions, str, dict[str, Any]]]:
    """The audio and options of a `POST /transcribe`-shaped request (multipart or JSON), the field the audio came
    in, and the values of `extra_fields` as sent (form text, or JSON values); an `audio_url` is fetched under
    `policy`. Raises: as the two readers (README
    "Errors")."""
    if is_json(request):
        data, field, options, extras = await read_json_audio(request, policy, max_bytes, extra_fields)
        return data, (options, field, extras)
    data, options, extras = await _read_multipart(request, extra_fields)
    return data, (options, "file", extras)
