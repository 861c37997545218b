"""Home Assistant's Wyoming protocol (https://github.com/OHF-Voice/wyoming): a TCP listener that answers `describe`
with `info` and `transcribe` + `audio-start` / `audio-chunk`... / `audio-stop` with a `transcript`, through the same
request lifecycle, admission and batcher as HTTP. Off unless `PARAKEET_WYOMING_PORT` is set. README "Wyoming (Home
Assistant)".

The event framing and types are the `wyoming` package's. Every uvicorn worker listens on the same port with
SO_REUSEPORT, so the kernel spreads connections over the workers as it does for HTTP. An utterance's PCM is
converted to 16 kHz samples as it arrives (parakeet.pipeline.stream_audio: the same conversion and resampler as an
uploaded WAV file, so the transcript equals `/transcribe`'s for the same audio), its memory held against the budget
as it grows; at most `max_upload_bytes` of PCM per utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler

from parakeet import VERSION
from parakeet.core import errors
from parakeet.pipeline.requests import RequestJob, TranscribeOptions
from parakeet.pipeline.stream_audio import PcmRecording, StreamAudio
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


class _Utterance:
    """One utterance being received: its request (the lifecycle) and its recording so far, or the refusal that
    will answer it at `audio-stop`."""

    def __init__(self, worker: Worker, fmt: AudioStart) -> None:
        self.worker, self.format = worker, fmt
        self.stack = contextlib.AsyncExitStack()
        self.job: RequestJob | None = None
        self.recording: PcmRecording | None = None
        self.received_bytes = 0
        self.refusal: errors.ParakeetError | None = None

    async def open(self) -> None:
        try:
            audio = StreamAudio("pcm", self.format.rate, width_bytes=self.format.width, channels=self.format.channels)
            job = await self.stack.enter_async_context(self.worker.request(declared_bytes=0))
        except errors.ParakeetError as exc:
            self.refusal = exc
            return
        except ValueError as exc:
            self.refusal = errors.InvalidAudio(f"unsupported audio format: {exc}")
            return
        self.job = job
        self.recording = PcmRecording(audio, lambda nbytes: job.hold(nbytes, "the utterance's audio"))

    def add(self, pcm: bytes) -> None:
        if self.refusal is not None or self.recording is None:
            return
        try:
            self.recording.add(pcm)
        except errors.ParakeetError as exc:
            self.refusal = exc
            self.recording.clear()

    async def transcribe(self) -> Transcript | Error:
        try:
            if self.refusal is not None:
                raise self.refusal
            assert self.job is not None and self.recording is not None
            audio = self.recording.finish()
            if audio.duration_s == 0:
                return Transcript(text="")
            outcome = await self.job.transcribe(TranscribeOptions(), audio=audio)
        except errors.ParakeetError as exc:
            return Error(exc.message, code=exc.code)
        finally:
            await self.close()
        return Transcript(text=outcome.transcript.text)

    async def close(self) -> None:
        if self.recording is not None:
            self.recording.clear()
        await self.stack.aclose()


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection: any number of utterances, one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, worker: Worker) -> None:
        super().__init__(reader, writer)
        self.worker = worker
        self.utterance: _Utterance | None = None

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.worker).event())
        elif Transcribe.is_type(event.type):
            await self._drop()  # language, model: one model detects the language itself
        elif AudioStart.is_type(event.type):
            await self._start(AudioStart.from_event(event))
        elif AudioChunk.is_type(event.type):
            return await self._chunk(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._stop()
        return True

    async def _start(self, fmt: AudioStart) -> None:
        await self._drop()
        self.utterance = _Utterance(self.worker, fmt)
        await self.utterance.open()

    async def _drop(self) -> None:
        if self.utterance is not None:
            await self.utterance.close()
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
        await self.write_event((await utterance.transcribe()).event())

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
