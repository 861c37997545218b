"""The server-wide phrase list (PARAKEET_KEYWORDS_FILE, parakeet/pipeline/phrase_file.py): read at start-up (a bad
file stops the worker with one line), merged after each request's own phrases, applied to Wyoming requests that
cannot send any, and re-read when the file changes (an invalid edit keeps the previous list and logs an ERROR)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from parakeet.core.errors import InvalidSettings
from parakeet.core.keywords import KeyPhrases
from parakeet.pipeline.phrase_file import ServerPhrases, read_phrase_file
from server import create_app

from fakes import FakeEngine, FixedEngineFactory, NoVad
from helpers import free_port, run, running_app, until, wav_of


def write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even within one tick


def test_phrase_file_format_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "phrases.txt"
    write(f, "# the house\nKitchen Light\n\nweight = 2.5\nliving room, lamp\nKitchen Light\n")
    assert read_phrase_file(f) == KeyPhrases(("Kitchen Light", "living room lamp"), 2.5)
    write(f, "# nothing but comments\n")
    assert read_phrase_file(f) is None
    for text, fragment in [
        ("weight = heavy\n", "line 1: weight must be a number, got 'heavy'"),
        ("x" * 101 + "\n", "has 101 characters; the limit is 100"),
        ("a\nweight = 50\n", "keyword_weight must be in (0, 10], got 50"),
    ]:
        write(f, text)
        with pytest.raises(InvalidSettings) as info:
            read_phrase_file(f)
        assert str(f) in info.value.message and fragment in info.value.message
    with pytest.raises(InvalidSettings, match="cannot be read"):
        read_phrase_file(tmp_path / "missing.txt")


def test_phrase_file_is_re_read_on_change_and_a_bad_edit_keeps_the_last_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "phrases.txt"
    write(f, "Anna\n")
    phrases = ServerPhrases(f)
    assert phrases.current() == KeyPhrases(("Anna",))
    write(f, "Anna\nBoris\n")
    assert phrases.current() == KeyPhrases(("Anna", "Boris"))
    with caplog.at_level(logging.ERROR, logger="parakeet.keywords"):
        write(f, "weight = x\n")
        assert phrases.current() == KeyPhrases(("Anna", "Boris"))
        assert phrases.current() == KeyPhrases(("Anna", "Boris"))  # one ERROR per change, not per request
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the previous 2 phrase(s)" in errors[0]
    assert ServerPhrases(None).current() is None


def test_server_phrases_merge_into_requests_and_wyoming(tmp_path: Path) -> None:
    f = tmp_path / "phrases.txt"
    write(f, "kitchen light\nweight = 2\n")
    engine = FakeEngine()
    port = free_port()

    async def wyoming_request() -> Any:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\x00\x01" * 8000).event())
            await client.write_event(AudioStop().event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 30)
                assert event is not None
                if Transcript.is_type(event.type):
                    return event

    async def main() -> None:
        async with running_app(engine, keywords_file=f, wyoming_port=port, host="127.0.0.1") as (_, client):
            r = await client.post("/transcribe", files={"file": ("a.wav", wav_of(1, 1.0))})
            assert r.status_code == 200
            r = await client.post(
                "/transcribe",
                files={"file": ("a.wav", wav_of(2, 1.0))},
                data={"keywords": "Anna", "keyword_weight": "3"},
            )
            assert r.status_code == 200
            await wyoming_request()
            write(f, "garage door\n")
            r = await client.post("/transcribe", files={"file": ("a.wav", wav_of(3, 1.0))})
            assert r.status_code == 200

    run(main())
    asked = [kw for call in engine.keywords_asked for kw in call]
    assert asked == [
        KeyPhrases(("kitchen light",), 2.0),
        KeyPhrases(("Anna", "kitchen light"), 3.0),  # the request's phrases first, its weight
        KeyPhrases(("kitchen light",), 2.0),  # Wyoming: the server's list
        KeyPhrases(("garage door",), 1.0),  # re-read after the edit
    ]


def test_a_bad_phrase_file_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "phrases.txt"
    write(f, "weight = ten\n")
    fatal: list[str] = []
    from parakeet.core.settings import Settings

    app = create_app(
        Settings(device="cpu", model="fake", keywords_file=f),
        engine_factory=FixedEngineFactory(FakeEngine()), on_fatal=fatal.append, vad_factory=NoVad(),
    )  # fmt: skip
    from asgi_lifespan import LifespanManager

    async def main() -> None:
        with pytest.raises(InvalidSettings):
            async with LifespanManager(app):
                pass

    run(main())
    assert fatal == [f"PARAKEET_KEYWORDS_FILE {f} line 1: weight must be a number, got 'ten'"]


def test_a_phrase_the_model_cannot_spell_stops_the_worker_or_is_refused_at_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Checked with the model's tokenizer once it is loaded: at start-up one line and the worker stops; at a reload
    the previous list stays (one ERROR)."""
    from asgi_lifespan import LifespanManager

    from parakeet.core.settings import Settings

    f = tmp_path / "phrases.txt"
    write(f, "Lodz\n")
    phrases = ServerPhrases(f)
    phrases.check_with(FakeEngine(cannot_spell="Łź").unspellable)
    with caplog.at_level(logging.ERROR, logger="parakeet.keywords"):
        write(f, "Łódź\n")
        assert phrases.current() == KeyPhrases(("Lodz",))
    assert any("cannot spell: 'Ł', 'ź'" in r.getMessage() for r in caplog.records)
    write(f, "Łódź\n")
    fatal: list[str] = []
    app = create_app(
        Settings(device="cpu", model="fake", keywords_file=f),
        engine_factory=FixedEngineFactory(FakeEngine(cannot_spell="Łź")), on_fatal=fatal.append, vad_factory=NoVad(),
    )  # fmt: skip

    async def start() -> None:
        async with LifespanManager(app):
            await until(lambda: fatal, 30, "the fatal line")  # the load runs in the background

    run(start())
    assert fatal == [f"PARAKEET_KEYWORDS_FILE {f}: the phrase 'Łódź' in 'PARAKEET_KEYWORDS_FILE' has characters the "
                     "model cannot spell: 'Ł', 'ź'"]  # fmt: skip
