"""Key phrases a request boosts (custom vocabulary): what they are, their limits, and their cache key.

The engine boosts them in NeMo's GPU phrase boosting for TDT greedy label-looping decoding (a boosting tree per
phrase list, one per batch item: `greedy.enable_per_stream_biasing`, `BiasingRequestItemConfig`,
`GPUBiasingMultiModel`; NeMo's user guide: https://docs.nvidia.com/nemo-framework/user-guide/latest/nemotoolkit/asr/
asr_customization/word_boosting.html). Identical lists share one compiled tree through `cache_key`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from parakeet.core.errors import BadRequest

MAX_PHRASES = 1000  # per request: NeMo compiles a tree per list; past this the first request's compile time grows
MAX_PHRASE_CHARS = 100  # per phrase: a phrase is a name or a term, not a paragraph
DEFAULT_WEIGHT = 1.0  # NeMo's `boosting_model_alpha` default
MAX_WEIGHT = 10.0  # past it every boosted token wins over the acoustic evidence


@dataclass(frozen=True)
class KeyPhrases:
    """A request's phrases to boost and their weight (NeMo's `boosting_model_alpha`).

    Attributes:
        phrases: 1..MAX_PHRASES distinct phrases, each 1..MAX_PHRASE_CHARS characters, stripped, in first-seen order.
        weight: the boosting weight, in (0, MAX_WEIGHT].
    """

    phrases: tuple[str, ...]
    weight: float = DEFAULT_WEIGHT

    @cached_property
    def cache_key(self) -> str:
        """Stable across requests and processes: the same phrases and weight reuse one compiled tree."""
        digest = hashlib.sha256("\n".join((f"{self.weight:g}", *self.phrases)).encode()).hexdigest()
        return f"parakeet-keywords-{digest[:32]}"


def parse_key_phrases(values: Iterable[str], weight: float | None, param: str = "keywords") -> KeyPhrases | None:
    """Key phrases from a request's values (each value may be a comma-separated list), or None when there are none.

    Raises:
        BadRequest: an empty phrase, a phrase over MAX_PHRASE_CHARS characters, more than MAX_PHRASES phrases, a
            weight outside (0, MAX_WEIGHT], or a weight without phrases; the message names the limit and the value,
            `param` the field.
    """
    phrases: list[str] = []
    for value in values:
        for raw in value.split(","):
            phrase = " ".join(raw.split())
            if not phrase:
                raise BadRequest(f"'{param}' holds an empty phrase (in {value[:60]!r})", param=param)
            if len(phrase) > MAX_PHRASE_CHARS:
                raise BadRequest(
                    f"a phrase in '{param}' has {len(phrase)} characters; the limit is {MAX_PHRASE_CHARS}", param=param
                )
            if phrase not in phrases:
                phrases.append(phrase)
    if len(phrases) > MAX_PHRASES:
        raise BadRequest(f"'{param}' has {len(phrases)} phrases; the limit is {MAX_PHRASES}", param=param)
    if weight is not None and not phrases:
        raise BadRequest("keyword_weight needs keywords to weigh", param="keyword_weight")
    w = DEFAULT_WEIGHT if weight is None else weight
    if not 0 < w <= MAX_WEIGHT:
        raise BadRequest(f"keyword_weight must be in (0, {MAX_WEIGHT:g}], got {w:g}", param="keyword_weight")
    return KeyPhrases(tuple(phrases), w) if phrases else None


def check_spelling(keywords: KeyPhrases | None, unspellable: Callable[[str], str], param: str = "keywords") -> None:
    """Refuse phrases the model cannot spell: its tokenizer maps some of their characters to the unknown token, so
    the boosting tree would boost "unknown" instead of the phrase. `unspellable` is `Engine.unspellable`.

    Raises:
        BadRequest: the first such phrase and its characters, `param` the field.
    """
    for phrase in keywords.phrases if keywords is not None else ():
        missing = unspellable(phrase)
        if missing:
            raise BadRequest(
                f"the phrase {phrase[:60]!r} in '{param}' has characters the model cannot spell: "
                + ", ".join(repr(c) for c in missing[:10]),
                param=param,
            )


def merge_key_phrases(request: KeyPhrases | None, server: KeyPhrases | None) -> KeyPhrases | None:
    """A request's phrases with the server-wide list's (`PARAKEET_KEYWORDS_FILE`) after them, duplicates once; the
    request's weight when it sent phrases, else the list's. Either may be None."""
    if request is None or server is None:
        return request or server
    phrases = tuple(dict.fromkeys((*request.phrases, *server.phrases)))
    return KeyPhrases(phrases, request.weight)
