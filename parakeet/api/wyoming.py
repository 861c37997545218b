"""Home Assistant's Wyoming protocol (https://github.com/OHF-Voice/wyoming): a TCP listener that answers `describe`
with `info` and `transcribe` + `audio-start` / `audio-chunk`... / `audio-stop` with a `transcript`, through the same
worker, admission and batcher as HTTP. Off unless `PARAKEET_WYOMING_PORT` is set. README "Wyoming (Home Assistant)".

The event framing and types are the `wyoming` package's. Every uvicorn worker listens on the same port with
SO_REUSEPORT, so the kernel spreads connections over the workers as it does for HTTP. The audio of an utterance is
buffered as it arrives (at most `max_upload_bytes`), then wrapped in a WAV header and decoded exactly as an upload
is: the transcript equals `/transcribe`'s for the same audio.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler

from parakeet import VERSION
from parakeet.core import errors
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
                         description="Parakeet-TDT transcription server", version=VERSION, models=[model])  # fmt: skip
    return Info(asr=[program])


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection: any number of utterances, one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, worker: Worker) -> None:
        super().__init__(reader, writer)
        self.worker = worker
        self.format: AudioStart | None = None
        self.audio = bytearray()

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.worker).event())
        elif Transcribe.is_type(event.type):
            self.format, self.audio = None, bytearray()  # language, model: one model detects the language itself
        elif AudioStart.is_type(event.type):
            self.format, self.audio = AudioStart.from_event(event), bytearray()
        elif AudioChunk.is_type(event.type):
            return await self._chunk(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._transcribe()
        return True

    async def _chunk(self, chunk: AudioChunk) -> bool:
        if self.format is None:
            self.format = AudioStart(rate=chunk.rate, width=chunk.width, channels=chunk.channels)
        limit = self.worker.settings.max_upload_bytes
        if len(self.audio) + len(chunk.audio) > limit:
            await self.write_event(
                Error(f"the audio passed the limit of {limit} bytes", code="upload_too_large").event()
            )
            return False  # disconnect: the rest of this utterance would be refused too
        self.audio += chunk.audio
        return True

    async def _transcribe(self) -> None:
        fmt, audio = self.format, bytes(self.audio)
        self.format, self.audio = None, bytearray()
        if fmt is None or not audio:
            await self.write_event(Transcript(text="").event())
            return
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(fmt.channels)
            w.setsampwidth(fmt.width)
            w.setframerate(fmt.rate)
            w.writeframes(audio)
        data = buf.getvalue()
        try:
            with self.worker.reserved_memory(len(data)) as memory, self.worker.admitted() as ticket:
                outcome = await self.worker.transcribe(ticket, data, timestamps=False, memory=memory)
        except errors.ParakeetError as exc:
            await self.write_event(Error(exc.message, code=exc.code).event())
            return
        await self.write_event(Transcript(text=outcome.transcript.text).event())


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
            try:
                await WyomingHandler(reader, writer, self.worker).run()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away
            except Exception:  # noqa: BLE001 - one connection's failure must not reach the listener
                log.exception("wyoming connection failed")
            finally:
                self._handlers.discard(task)

        self._server = await asyncio.start_server(connected, self.host, self.port, reuse_port=True)
        log.info("Wyoming listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
