"""The server-wide phrase list (`PARAKEET_KEYWORDS_FILE`): key phrases boosted in every request, merged with the
request's own (README "Custom vocabulary"); the Home Assistant use: the house's entity and area names, for Wyoming
requests that cannot send any.

File format (UTF-8): one phrase per line; blank lines and lines starting with `#` are skipped; one optional line
`weight = <number>` sets the list's boosting weight (default 1; NeMo boosts a list with one weight). The file is
re-read when its modification time or size changes (checked at each request: one `stat`) or at SIGHUP, so
editing it needs no restart; an edit that makes it invalid keeps the previous list and logs one ERROR naming the
problem.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from parakeet.core import errors
from parakeet.core.keywords import KeyPhrases, check_spelling, parse_key_phrases

log = logging.getLogger("parakeet.keywords")


def read_phrase_file(path: Path) -> KeyPhrases | None:
    """The file's phrases (None when it holds none).

    Raises:
        InvalidSettings: the file cannot be read, or a phrase or the weight breaks a limit of
            `parakeet.core.keywords` (the message names the file, the line and the limit).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.InvalidSettings(
            f"PARAKEET_KEYWORDS_FILE {path}: cannot be read ({exc.__class__.__name__})"
        ) from None
    phrases: list[str] = []
    weight: float | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "weight":
            try:
                weight = float(value)
            except ValueError:
                raise errors.InvalidSettings(
                    f"PARAKEET_KEYWORDS_FILE {path} line {number}: weight must be a number, got {value.strip()[:40]!r}"
                ) from None
            continue
        phrases.append(line.replace(",", " "))  # a line is one phrase: its commas do not split it
    try:
        return parse_key_phrases(phrases, weight if phrases else None, param="PARAKEET_KEYWORDS_FILE")
    except errors.BadRequest as exc:
        raise errors.InvalidSettings(f"PARAKEET_KEYWORDS_FILE {path}: {exc.message}") from None


class ServerPhrases:
    """The phrase list of `path` (None: no server-wide list), re-read when the file changes.

    Raises (construction):
        InvalidSettings: the file is invalid at start-up (the worker stops with that one line).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._phrases: KeyPhrases | None = None
        self._spelling: Callable[[str], str] = lambda text: ""
        if path is not None:
            self._stamp = self._stat()
            self._phrases = read_phrase_file(path)
            count = len(self._phrases.phrases) if self._phrases else 0
            log.info("server-wide key phrases: %d from %s", count, path)

    def check_with(self, unspellable: Callable[[str], str]) -> None:
        """Check the list, now and at every reload, with the model's tokenizer (`Engine.unspellable`).

        Raises:
            InvalidSettings: a phrase holds characters the model cannot spell (the worker stops with that line).
        """
        self._spelling = unspellable
        self._check(self._phrases)

    def _check(self, phrases: KeyPhrases | None) -> None:
        try:
            check_spelling(phrases, self._spelling, param="PARAKEET_KEYWORDS_FILE")
        except errors.BadRequest as exc:
            raise errors.InvalidSettings(f"PARAKEET_KEYWORDS_FILE {self.path}: {exc.message}") from None

    def _stat(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload(self) -> None:
        """Re-read the file now, changed or not (SIGHUP)."""
        if self.path is not None:
            self._stamp = (-1, -1)
            self.current()

    def current(self) -> KeyPhrases | None:
        """The list now: re-read first if the file changed since the last read (an invalid or vanished file keeps
        the previous list, with one ERROR per change)."""
        if self.path is None:
            return None
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                phrases = read_phrase_file(self.path)
                self._check(phrases)
                self._phrases = phrases
            except errors.InvalidSettings as exc:
                log.error("%s; keeping the previous %d phrase(s)", exc.message,
                          len(self._phrases.phrases) if self._phrases else 0)  # fmt: skip
            else:
                count = len(self._phrases.phrases) if self._phrases else 0
                log.info("server-wide key phrases reloaded: %d from %s", count, self.path)
        return self._phrases
