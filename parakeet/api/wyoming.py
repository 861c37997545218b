"""Home Assistant's Wyoming protocol (https://github.com/OHF-Voice/wyoming): a TCP listener that answers `describe`
with `info` and `transcribe` + `audio-start` / `audio-chunk`... / `audio-stop` with a `transcript`, through the same
request lifecycle, admission and batcher as HTTP. Off unless `PARAKEET_WYOMING_PORT` is set. README "Wyoming (Home
Assistant)".

The event framing and types are the `wyoming` package's. Every uvicorn worker listens on the same port with
SO_REUSEPORT, so the kernel spreads connections over the workers as it does for HTTP. An utterance's PCM is
converted to 16 kHz samples as it arrives (parakeet.pipeline.stream_audio: the same conversion and resampler as an
uploaded WAV file, so the transcript equals `/transcribe`'s for the same audio), its memory held against the budget
as it grows; at most `max_upload_bytes` of PCM per utterance.

Streaming transcripts (`info` says `supports_transcript_streaming`): while the audio arrives, the utterance is also
a live stream (the `/ws` pipeline, partials only) and its committed text goes out as `transcript-start`, then
`transcript-chunk` deltas; at `audio-stop` the last delta (the offline transcript past what the chunks said, when it
extends it), the `transcript` (the offline transcript, equal to `/transcribe`'s) and `transcript-stop` follow. When
the worker has no room for another stream the utterance is answered with the `transcript` alone, as a
non-streaming server does (a client must accept both: the protocol's README). `transcribe`'s `transcript_names`
and `transcript_terms` are boosted as key phrases (README "Custom vocabulary").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler

from parakeet import VERSION
from parakeet.core import errors
from parakeet.core.keywords import KeyPhrases, parse_key_phrases
from parakeet.pipeline.requests import RequestLifecycle, TranscribeOptions
from parakeet.pipeline.stream_audio import PcmRecording, StreamAudio
from parakeet.pipeline.stream_session import Partial, StreamEvent, StreamSession, text_delta
from parakeet.pipeline.worker import Worker

log = logging.getLogger("parakeet.wyoming")

# Parakeet-TDT-0.6B-v3's 25 European languages (model card, https://huggingface.co/nvidia/parakeet-tdt-0.6b-v3).
LANGUAGES = ["bg", "hr", "cs", "da", "nl", "en", "et", "fi", "fr", "de", "el", "hu", "it", "lv", "lt", "mt", "pl",
             "pt", "ro", "sk", "sl", "es", "sv", "ru", "uk"]  # fmt: skip


def describe(worker: Worker) -> Info:
    attribution = Attribution(name="NVIDIA", url="https://huggingface.co/nvidia/parakeet-tdt-0.6b-v3")
    model = AsrModel(name=worker.settings.model, attribution=attribution, installed=True,
                     description="Parakeet-TDT (NeMo)", version=None, languages=LANGUAGES)  # fmt: skip
    program = AsrProgram(name="parakeet-server", attribution=attribution, installed=True,
                         description="Parakeet-TDT transcription server", version=VERSION, models=[model],
                         supports_transcript_streaming=True)  # fmt: skip
    return Info(asr=[program])


def key_phrases(request: Transcribe) -> KeyPhrases | None:
    """The phrases a `transcribe` event asks to boost: its `transcript_names` (Home Assistant's entity and area
    names), then its `transcript_terms`, one weight for both (NeMo boosts a list with one weight); a comma inside a
    name does not split it.

    Raises:
        BadRequest: a limit of `parakeet.core.keywords` is broken (the message names it).
    """
    values = [*(request.transcript_names or []), *(request.transcript_terms or [])]
    return parse_key_phrases([str(v).replace(",", " ") for v in values], None, param="transcript_names")


class _LiveTranscript:
    """The streaming transcript of one utterance: a partials-only live stream whose committed text (never the
    speculative tail, which may change), in whole words, goes out as `transcript-chunk` deltas. Deltas that pile up
    while one is being written go out as one (a slow reader gets fewer, longer chunks, never a backlog).

    Args:
        write: the connection's event writer (one at a time, in order).
    """

    def __init__(self, write: Callable[[Event], Awaitable[None]]) -> None:
        self.write = write
        self.session: StreamSession | None = None
        self.sent = ""  # what the chunks so far add up to
        self._unsent = ""
        self._sender: asyncio.Task[None] | None = None

    def open(self, worker: Worker, keywords: KeyPhrases | None) -> bool:
        """Open the live stream; False (and no streaming for this utterance) when the worker refuses one."""
        try:
            self.session = worker.open_stream(self._on_event, keywords=keywords, finals=False)
        except errors.ParakeetError as exc:
            log.info("wyoming utterance without streaming transcript: %s", exc.message)
            return False
        return True

    def _on_event(self, event: StreamEvent) -> None:
        if isinstance(event, Partial):
            self.extend(event.committed_text)

    def extend(self, text: str, *, whole_words: bool = True) -> None:
        """Send what `text` adds to the text sent so far (`text_delta`)."""
        delta = text_delta(self.sent + self._unsent, text, whole_words=whole_words)
        if delta:
            self._unsent += delta
            if self._sender is None or self._sender.done():
                self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while self._unsent:
            delta, self._unsent = self._unsent, ""
            self.sent += delta
            await self.write(TranscriptChunk(text=delta).event())

    def stop(self) -> None:
        """The audio ended: no more partials (the stream and its step in flight are dropped)."""
        if self.session is not None:
            self.session.close()
            self.session = None

    async def finish(self, final_text: str | None) -> None:
        """After `stop`: send the chunks still queued, then the final's remainder past them (`final_text`, when
        it extends what they said)."""
        if final_text is not None:
            self.extend(final_text, whole_words=False)
        if self._sender is not None:
            await self._sender

    def close(self) -> None:
        self.stop()
        if self._sender is not None:
            self._sender.cancel()


class _Utterance:
    """One utterance being received: its request (the lifecycle), its recording so far and its live transcript, or
    the refusal that will answer it at `audio-stop`.

    Args:
        keywords: the phrases its `transcribe` event asked to boost (the server-wide list is merged in later).
        refusal: why it will be refused whatever its audio (e.g. a phrase over a limit), or None.
    """

    def __init__(
        self, worker: Worker, fmt: AudioStart, keywords: KeyPhrases | None, refusal: errors.ParakeetError | None
    ) -> None:
        self.worker, self.format, self.keywords, self.refusal = worker, fmt, keywords, refusal
        self.stack = contextlib.AsyncExitStack()
        self.lifecycle: RequestLifecycle | None = None
        self.recording: PcmRecording | None = None
        self.live: _LiveTranscript | None = None
        self.received_bytes = 0

    async def open(self, write: Callable[[Event], Awaitable[None]]) -> None:
        """Open the request and, when the worker has room for a stream, the live transcript (`transcript-start`)."""
        if self.refusal is not None:
            return
        try:
            audio = StreamAudio("pcm", self.format.rate, width_bytes=self.format.width, channels=self.format.channels)
            lifecycle = await self.stack.enter_async_context(self.worker.request(declared_bytes=0))
        except errors.ParakeetError as exc:
            self.refusal = exc
            return
        except ValueError as exc:
            self.refusal = errors.InvalidAudio(f"unsupported audio format: {exc}")
            return
        self.lifecycle = lifecycle
        self.recording = PcmRecording(audio, lambda nbytes: lifecycle.hold_memory(nbytes, "the utterance's audio"))
        live = _LiveTranscript(write)
        if live.open(self.worker, self.keywords):
            self.live = live
            await write(TranscriptStart(language=None).event())

    def add(self, pcm: bytes) -> None:
        if self.refusal is not None or self.recording is None:
            return
        try:
            samples = self.recording.add(pcm)
        except errors.ParakeetError as exc:
            self.refusal = exc
            self.recording.clear()
            if self.live is not None:
                self.live.stop()
            return
        if self.live is not None and self.live.session is not None:
            self.live.session.append(samples)

    async def answer(self, write: Callable[[Event], Awaitable[None]]) -> None:
        """At `audio-stop`: the transcript (or error) event, after the live transcript's last chunks and before
        its `transcript-stop`."""
        if self.live is not None:
            self.live.stop()
        result = await self._transcribe()
        if self.live is not None:
            await self.live.finish(result.text if isinstance(result, Transcript) else None)
        await write(result.event())
        if self.live is not None:
            await write(TranscriptStop().event())

    async def _transcribe(self) -> Transcript | Error:
        try:
            if self.refusal is not None:
                raise self.refusal
            assert self.lifecycle is not None and self.recording is not None
            audio = self.recording.finish()
            if audio.duration_s == 0:
                return Transcript(text="")
            outcome = await self.lifecycle.transcribe(TranscribeOptions(keywords=self.keywords), audio=audio)
        except errors.ParakeetError as exc:
            return Error(exc.message, code=exc.code)
        finally:
            await self.close()
        return Transcript(text=outcome.transcript.text)

    async def close(self) -> None:
        if self.recording is not None:
            self.recording.clear()
        if self.live is not None:
            self.live.stop()
        await self.stack.aclose()


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection: any number of utterances, one at a time. Its events are written one at a time, in
    order (the live transcript's chunks come from their own task)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, worker: Worker) -> None:
        super().__init__(reader, writer)
        self.worker = worker
        self.utterance: _Utterance | None = None
        self._write_lock = asyncio.Lock()
        self._keywords: KeyPhrases | None = None  # from the last `transcribe`, for the next utterance
        self._keywords_refusal: errors.ParakeetError | None = None

    async def write_event(self, event: Event) -> None:
        async with self._write_lock:
            await super().write_event(event)

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.worker).event())
        elif Transcribe.is_type(event.type):
            await self._drop()  # language, model: one model detects the language itself
            self._requested(Transcribe.from_event(event))
        elif AudioStart.is_type(event.type):
            await self._start(AudioStart.from_event(event))
        elif AudioChunk.is_type(event.type):
            return await self._chunk(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._stop()
        return True

    def _requested(self, request: Transcribe) -> None:
        self._keywords, self._keywords_refusal = None, None
        try:
            self._keywords = key_phrases(request)
        except errors.BadRequest as exc:
            self._keywords_refusal = exc

    async def _start(self, fmt: AudioStart) -> None:
        await self._drop()
        self.utterance = _Utterance(self.worker, fmt, self._keywords, self._keywords_refusal)
        self._keywords, self._keywords_refusal = None, None  # a `transcribe` is for the utterance after it
        await self.utterance.open(self.write_event)

    async def _drop(self) -> None:
        if self.utterance is not None:
            await self.utterance.close()
            if self.utterance.live is not None:
                self.utterance.live.close()
            self.utterance = None

    async def _chunk(self, chunk: AudioChunk) -> bool:
        if self.utterance is None:
            await self._start(AudioStart(rate=chunk.rate, width=chunk.width, channels=chunk.channels))
        assert self.utterance is not None
        limit = self.worker.settings.max_upload_bytes
        self.utterance.received_bytes += len(chunk.audio)
        if self.utterance.received_bytes > limit:
            await self._drop()
            await self.write_event(
                Error(f"the audio passed the limit of {limit} bytes", code="upload_too_large").event()
            )
            return False  # disconnect: the rest of this utterance would be refused too
        self.utterance.add(chunk.audio)
        return True

    async def _stop(self) -> None:
        utterance, self.utterance = self.utterance, None
        if utterance is None:
            await self.write_event(Transcript(text="").event())
            return
        await utterance.answer(self.write_event)

    async def disconnect(self) -> None:
        await self._drop()


class WyomingServer:
    """The listener of one worker (started and stopped by the app's lifespan)."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker, self.host, self.port = worker, host, port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Raises: OSError: the port cannot be bound."""

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            handler = WyomingHandler(reader, writer, self.worker)
            try:
                await handler.run()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away
            except Exception:
                log.exception("wyoming connection failed")
            finally:
                await handler.disconnect()
                self._handlers.discard(task)

        self._server = await asyncio.start_server(connected, self.host, self.port, reuse_port=True)
        log.info("Wyoming listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
