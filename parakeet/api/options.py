"""The options of `POST /transcribe` (and `POST /v1/jobs`), one pydantic model for a multipart form and a JSON body
alike: one set of names and aliases, one validation, and the request schema /docs shows (`openapi_request_body`).
README "POST /transcribe", "Custom vocabulary", "JSON and URL input"."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData

from parakeet.api.uploads import form_bool, form_text
from parakeet.core import errors
from parakeet.core.keywords import KeyPhrases, parse_key_phrases
from parakeet.pipeline.requests import TranscribeOptions


class PhraseItem(BaseModel):
    """One key phrase with its own weight (`{"phrase": "Anna Kowalski", "weight": 2}`; JSON only)."""

    model_config = ConfigDict(extra="forbid")

    phrase: str
    weight: float | None = None


TIMESTAMP_ALIASES = ("timestamps", "timestamp", "include_timestamps")  # ours, serverless handlers', other servers'


class TranscribeFields(BaseModel):
    """What a request asks for beyond the text (`TranscribeOptions` once checked: `options()`)."""

    model_config = ConfigDict(extra="forbid")

    timestamps: bool = Field(
        False, validation_alias=AliasChoices(*TIMESTAMP_ALIASES),
        description="word, segment and token timestamps (also spelled timestamp, include_timestamps)",
    )  # fmt: skip
    confidence: bool = Field(False, description="word and token confidence and token log-probabilities")
    diarize: bool = Field(False, description="who spoke each word (needs PARAKEET_DIARIZATION_MODEL)")
    keywords: Any = Field(
        None,
        description="key phrases to boost: a comma list; in a form repeatable (keywords, keywords[]); in JSON also a "
        'list of strings and {"phrase", "weight"} objects',
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array", "items": {}}]},
    )
    keyword_weight: float | None = Field(None, description="boosting weight of the key phrases (default 1)")
    should_chunk: bool | None = Field(None, description="accepted, ignored: past 180 s audio is always chunked")

    def options(self) -> TranscribeOptions:
        """The checked options.

        Raises:
            BadRequest: key phrases past a limit, or JSON phrases with different weights (`key_phrases`).
        """
        keywords = key_phrases(self.keywords, self.keyword_weight)
        return TranscribeOptions(self.timestamps, self.confidence, keywords, self.diarize)


_BOOLS = ("confidence", "diarize", "should_chunk")


def fields_of_form(form: FormData) -> TranscribeFields:
    """The options of a multipart form: true/false text fields (`form_bool`), `keywords` repeatable (each value may
    be a comma list; `keywords[]` as OpenAI's SDK sends a list), `keyword_weight` a number. Fields the model does
    not name are not read (a form may carry a client's own).

    Raises:
        BadRequest: a value that is not true/false or not a number, or a file where text belongs.
    """
    values: dict[str, Any] = {name: form_bool(form, name) for name in (*TIMESTAMP_ALIASES, *_BOOLS) if name in form}
    if any(values.pop(a, False) for a in TIMESTAMP_ALIASES):
        values["timestamps"] = True
    keywords, weight = form_keyword_values(form)
    if keywords:
        values["keywords"] = keywords
    if weight is not None:
        values["keyword_weight"] = weight
    return TranscribeFields.model_validate(values)


def form_keyword_values(form: FormData) -> tuple[list[str], float | None]:
    """A form's key phrases as sent: every `keywords` / `keywords[]` value (OpenAI's SDK sends a list as
    `keywords[]`) and `keyword_weight`, for `key_phrases`.

    Raises:
        BadRequest: a file where text belongs, or a weight that is not a number.
    """
    values = []
    for key in ("keywords", "keywords[]"):
        for value in form.getlist(key):
            if not isinstance(value, str):
                raise errors.BadRequest("form field 'keywords' must be text, not a file", param="keywords")
            values.append(value)
    raw = (form_text(form, "keyword_weight") or "").strip()
    try:
        weight = float(raw) if raw else None
    except ValueError:
        raise errors.BadRequest(f"keyword_weight must be a number, got {raw[:40]!r}", param="keyword_weight") from None
    return values, weight


def form_key_phrases(form: FormData) -> KeyPhrases | None:
    """A form's key phrases, checked (`form_keyword_values`, `key_phrases`): the OpenAI route's reader.

    Raises:
        BadRequest: as the two.
    """
    return key_phrases(*form_keyword_values(form))


def key_phrases(raw: Any, keyword_weight: float | None) -> KeyPhrases | None:
    """`keywords` as a string (a comma list), a list of strings (each may be a comma list) or of `PhraseItem`s (a
    phrase with a comma stays one phrase), with `keyword_weight`. NeMo boosts a request's list with one weight, so
    the weights given must agree.

    Raises:
        BadRequest: weights that differ (param `keywords`), or as `parse_key_phrases`.
    """
    items = [raw] if isinstance(raw, str) else raw if raw is not None else []
    if not isinstance(items, list):
        raise errors.BadRequest("'keywords' must be a string or a list", param="keywords")
    values, weights = [], set()
    for i, item in enumerate(items):
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
    if keyword_weight is not None:
        weights.add(keyword_weight)
    if len(weights) > 1:
        listed = ", ".join(f"{w:g}" for w in sorted(weights))
        raise errors.BadRequest(
            f"'keywords' gives different weights ({listed}); NeMo boosts a request's phrases with one weight: send "
            "keyword_weight, or the same weight on every phrase",
            param="keywords",
        )
    return parse_key_phrases(values, weights.pop() if weights else None)


class JsonAudioRequest(TranscribeFields):
    """A JSON body (or its `input` object): exactly one of the audio fields, and the options."""

    audio_base64: str | None = Field(None, description="the audio, standard or URL-safe base64; a data: prefix is ok")
    audio_url: str | None = Field(None, description="http(s) URL the server fetches (needs PARAKEET_URL_INPUT=true)")


def openapi_request_body() -> dict[str, Any]:
    """`POST /transcribe`'s request body for OpenAPI (/docs), from the models themselves: a multipart form (`file`
    and every option) or a JSON body (the audio fields and every option)."""
    options = TranscribeFields.model_json_schema()["properties"]
    multipart = {"type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"}, **options}}  # fmt: skip
    wrapped = 'exactly one of audio_base64, audio_url; or the same wrapped as {"input": {...}}'
    body = {**JsonAudioRequest.model_json_schema(), "title": "JsonAudioRequest", "description": wrapped}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart}, "application/json": {"schema": body},
    }}}  # fmt: skip
