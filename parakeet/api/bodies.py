"""The body of a `POST /transcribe`-shaped request, multipart or JSON (base64 or URL): the audio bytes, the
request's `TranscribeOptions`, the field the audio came in, and any extra fields a route takes (`POST /v1/jobs`:
`metadata`, `webhook_url`). One reader for every route that takes these inputs: `read_body_with` gives the audio
bytes (to transcribe now), `copy_body_into` hands them on a piece at a time (a job's audio, stored as it is read:
a form's file part is copied from Starlette's spooled temporary file, never whole in memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from parakeet.api.json_input import is_json, read_json_audio
from parakeet.api.options import fields_of_form
from parakeet.api.uploads import form_file, form_text, multipart_form, read_file
from parakeet.jobs.audio import CHUNK_BYTES
from parakeet.pipeline.fetch import UrlPolicy
from parakeet.pipeline.requests import TranscribeOptions


@asynccontextmanager
async def _multipart(
    request: Request, extra_fields: tuple[str, ...]
) -> AsyncIterator[tuple[UploadFile, TranscribeOptions, dict[str, Any]]]:
    """A form's file part (open while the context lasts), its options and the `extra_fields` sent."""
    async with multipart_form(request) as form:
        part = form_file(form)
        options = fields_of_form(form).options()
        extras = {name: value for name in extra_fields if (value := form_text(form, name)) is not None}
        yield part, options, extras


async def _read_multipart(
    request: Request, extra_fields: tuple[str, ...] = ()
) -> tuple[bytes, TranscribeOptions, dict[str, Any]]:
    async with _multipart(request, extra_fields) as (part, options, extras):
        return await read_file(part), options, extras


async def read_body_with(
    request: Request, policy: UrlPolicy, max_bytes: int, extra_fields: tuple[str, ...]
) -> tuple[bytes, tuple[TranscribeOptions, str, dict[str, Any]]]:
    """The audio and options of a `POST /transcribe`-shaped request (multipart or JSON), the field the audio came
    in, and the values of `extra_fields` as sent (form text, or JSON values); an `audio_url` is fetched under
    `policy`.

    Raises:
        As the two readers (README "Errors").
    """
    if is_json(request):
        data, field, options, extras = await read_json_audio(request, policy, max_bytes, extra_fields)
        return data, (options, field, extras)
    data, options, extras = await _read_multipart(request, extra_fields)
    return data, (options, "file", extras)


async def copy_body_into(
    request: Request, policy: UrlPolicy, max_bytes: int, extra_fields: tuple[str, ...],
    write: Callable[[bytes], Awaitable[None]],
) -> tuple[int, TranscribeOptions, str, dict[str, Any]]:  # fmt: skip
    """`read_body_with`, but the audio goes to `write` in pieces of at most `CHUNK_BYTES`, in order, as it is read.

    Returns:
        The audio's size in bytes, the options, the field it came in, the extra fields.

    Raises:
        As `read_body_with`, and whatever `write` raises.
    """
    if is_json(request):  # (a JSON body is in memory whole anyway: its base64 text is)
        data, field, options, extras = await read_json_audio(request, policy, max_bytes, extra_fields)
        view = memoryview(data)
        for at in range(0, len(data), CHUNK_BYTES):
            await write(bytes(view[at : at + CHUNK_BYTES]))
        return len(data), options, field, extras
    async with _multipart(request, extra_fields) as (part, options, extras):
        nbytes = 0
        while piece := await part.read(CHUNK_BYTES):
            await write(piece)
            nbytes += len(piece)
        return nbytes, options, "file", extras
