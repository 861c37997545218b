"""Audio decoding in subprocesses (parakeet.pipeline.decoder_child), driven straight from the event loop.

libsndfile and FFmpeg have a history of crashes on crafted files; a crash in the worker itself would take its
loaded model and every request in it down. So each worker keeps a few decoder subprocesses, each with an
address-space cap, and talks to each over its stdin/stdout pipes with a small binary protocol (decoder_child's
docstring) read and written by asyncio: no executor threads and no pickling of the upload or the waveform
(BENCHMARKS.md, "Front end"). The caller's `reserve` callback is asked for the waveform's memory when the file's
header arrives, before any sample exists, and again whenever the samples outgrow it, so a request's memory budget
covers what its decoder produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import cast

import numpy as np

from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.errors import DecoderUnavailable, ParakeetError
from parakeet.pipeline import decoder_child as wire
from parakeet.pipeline.audio import DECODERS, DecodedAudio

log = logging.getLogger("parakeet.audio")

# reserve(nbytes): make the request's reservation for the waveform being decoded `nbytes` in all, or raise
# (MemoryBudgetFull, ClientDisconnected: the decode stops and the decoder goes back to the pool).
Reserve = Callable[[int], None]
UNKNOWN_LENGTH_SAMPLES = 30 * SAMPLE_RATE_HZ  # first buffer when the container gives no length; doubled as needed
SLACK_SAMPLES = SAMPLE_RATE_HZ  # a header's length is the resampler's estimate: room for one more second


class _DecoderDied(Exception):
    """The subprocess exited, or its pipe broke, in the middle of a request."""


class _DecoderProtocol(asyncio.SubprocessProtocol):
    """Reads the child's answers straight into their final buffers: the samples land in the waveform array as they
    arrive (one copy per pipe read), with none of StreamReader's buffer growth and slicing. Also the write side's
    flow control, and the one-byte go/stop answer to a header."""

    def __init__(self) -> None:
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.in_sync = True  # False once an answer was abandoned part-way: the decoder must be replaced
        self.stdin: asyncio.WriteTransport | None = None
        self._answer: asyncio.Future[object] | None = None
        self._reserve: Reserve | None = None
        self._stage = ""
        self._target = memoryview(bytearray(0))
        self._pos = 0
        self._meta: tuple[int, int, int] = (0, 0, 0)
        self._wave = np.zeros(0, dtype=np.float32)
        self._filled = 0
        self._refusal: ParakeetError | None = None  # the reservation failed mid-file: its samples are skipped
        self._dead: str | None = None

    def expect(self, stage: str, reserve: Reserve | None = None) -> asyncio.Future[object]:
        """Start reading one answer: "ready" (the start-up byte) or "status" (a decode answer)."""
        self._answer = asyncio.get_running_loop().create_future()
        self._reserve, self._refusal, self._filled = reserve, None, 0
        if self._dead is not None:
            self._answer.set_exception(_DecoderDied(self._dead))
        else:
            self._read(stage, 1)
        return self._answer

    def _read(self, stage: str, n: int, into: memoryview | None = None) -> None:
        self._stage, self._pos = stage, 0
        self._target = into if into is not None else memoryview(bytearray(n))
        if n == 0:
            self._advance()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if fd != 1:
            return
        view = memoryview(data)
        while view:
            if self._answer is None or not self._stage:
                self._fail("the decoder wrote output nobody asked for")
                return
            k = min(len(view), len(self._target) - self._pos)
            self._target[self._pos : self._pos + k] = view[:k]
            self._pos += k
            view = view[k:]
            if self._pos == len(self._target):
                self._advance()

    def _advance(self) -> None:
        got = b"" if self._stage == "samples" else bytes(self._target)
        stage = self._stage
        if stage == "ready":
            if got == wire.READY:
                self._settle(None)
            else:
                self._fail(f"unexpected start-up byte {got!r} from the decoder")
        elif stage in ("status", "kind", "stopped"):
            self._on_tag(got, stage)
        elif stage == "header":
            self._on_header(*wire.HEADER.unpack(got))
        elif stage == "block":
            self._on_block(wire.LENGTH.unpack(got)[0])
        elif stage == "samples":
            self._filled += len(self._target) // 4 if self._refusal is None else 0
            self._read("kind", 1)
        elif stage == "length":
            self._read("error", wire.LENGTH.unpack(got)[0])
        elif stage == "error":
            error = pickle.loads(got)
            self._settle(self._refusal or error)

    def _on_tag(self, tag: bytes, stage: str) -> None:
        if tag == wire.REFUSED:
            self._read("length", wire.LENGTH.size)
        elif tag == wire.HEADER_TAG and stage == "status":
            self._read("header", wire.HEADER.size)
        elif tag == wire.STOPPED and stage == "stopped":
            self._settle(self._refusal)
        elif tag == wire.BLOCK and stage == "kind":
            self._read("block", wire.LENGTH.size)
        elif tag == wire.END and stage == "kind":
            rate, channels, decoder = self._meta
            if self._refusal is not None:
                self._settle(self._refusal)
            else:
                self._settle(DecodedAudio(self._wave[: self._filled], rate, channels, DECODERS[decoder]))
        else:
            self._fail(f"unexpected byte {tag!r} from the decoder ({stage})")

    def _on_header(self, rate: int, channels: int, decoder: int, expected: int) -> None:
        self._meta = (rate, channels, decoder)
        capacity = UNKNOWN_LENGTH_SAMPLES if expected == wire.UNKNOWN_LENGTH else expected + SLACK_SAMPLES
        try:
            if self._reserve is not None:
                self._reserve(4 * capacity)
        except ParakeetError as exc:  # e.g. the memory budget: stop the child before it decodes anything
            self._refusal = exc
            self._write(wire.STOP)
            self._read("stopped", 1)
            return
        self._wave = np.empty(capacity, dtype=np.float32)  # pages are touched only as samples arrive
        self._write(wire.GO)
        self._read("kind", 1)

    def _on_block(self, n: int) -> None:
        if self._refusal is None and self._filled + n > len(self._wave):
            capacity = max(2 * len(self._wave), self._filled + n)
            try:
                if self._reserve is not None:
                    self._reserve(4 * capacity)
            except ParakeetError as exc:  # the rest of the file is read and dropped: the pipes stay in step
                self._refusal = exc
            else:
                grown = np.empty(capacity, dtype=np.float32)
                grown[: self._filled] = self._wave[: self._filled]
                self._wave = grown
        if self._refusal is not None:
            self._read("samples", 4 * n)  # into a scratch buffer
        else:
            self._read("samples", 4 * n, self._wave[self._filled : self._filled + n].data.cast("B"))

    def _write(self, byte: bytes) -> None:
        if self.stdin is None or self.stdin.is_closing():
            self._fail("the decoder's input pipe is closed")
        else:
            self.stdin.write(byte)

    def _settle(self, result: object) -> None:
        if self._answer is not None and not self._answer.done():
            if isinstance(result, BaseException):
                self._answer.set_exception(result)
            else:
                self._answer.set_result(result)
        self._stage, self._wave = "", np.zeros(0, dtype=np.float32)

    def _fail(self, why: str) -> None:
        self._dead = self._dead or why
        self.in_sync = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(_DecoderDied(self._dead))
        self.writable.set()  # wake a writer: it will find the decoder dead

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._fail(f"the decoder's pipe closed ({exc or 'end of file'})")

    def process_exited(self) -> None:
        self._fail("the decoder subprocess exited")
        if not self.exited.done():
            self.exited.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class _Decoder:
    """One decoder subprocess and its two pipes; one request at a time."""

    def __init__(self, transport: asyncio.SubprocessTransport, protocol: _DecoderProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        # (uvloop's pipe transports are not asyncio.WriteTransport subclasses, but have its methods)
        protocol.stdin = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    @classmethod
    async def spawn(cls, decode_fn: wire.DecodeFn, memory_limit_bytes: int | None) -> _Decoder:
        """Start a child and wait until it has imported its decoders (~0.3 s)."""
        ref = f"{decode_fn.__module__}:{decode_fn.__qualname__}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        transport, protocol = await asyncio.get_running_loop().subprocess_exec(
            _DecoderProtocol,
            sys.executable, "-m", "parakeet.pipeline.decoder_child", ref, str(memory_limit_bytes or 0),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
        )  # fmt: skip
        decoder = cls(transport, protocol)
        try:
            await protocol.expect("ready")
        except BaseException:  # cancelled (the pool is closing) or the child failed to start
            decoder.kill()
            with contextlib.suppress(BaseException):  # reap it first: a Popen dropped while running warns
                await asyncio.wait_for(asyncio.shield(protocol.exited), 5)
            transport.close()
            raise
        return decoder

    async def decode(self, data: bytes, max_duration_s: float, reserve: Reserve | None) -> DecodedAudio:
        """Send one file, read its answer.

        Raises:
            ParakeetError: the decoder refused the file (the child's own exception), or `reserve` refused.
            _DecoderDied: the child crashed or its pipe broke.
        """
        stdin = self.protocol.stdin
        if stdin is None or stdin.is_closing() or self.protocol.exited.done():
            raise _DecoderDied("the decoder's input pipe is closed")
        answer = self.protocol.expect("status", reserve)
        stdin.write(wire.REQUEST.pack(len(data), max_duration_s))
        stdin.write(data)
        await self.protocol.writable.wait()
        result = await answer
        assert isinstance(result, DecodedAudio)
        return result

    def kill(self) -> None:
        if self.transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()

    async def wait(self) -> None:
        """Wait for the process to end (kill it first), then release its transport."""
        await self.protocol.exited
        self.transport.close()


class AudioDecoderPool:
    """Decodes uploads in a pool of subprocesses, each with an address-space cap.

    A decoder that crashes (SIGSEGV in libsndfile/FFmpeg, or a MemoryError at the cap) or runs past `timeout_s`
    costs only its subprocess: it is killed and replaced, and the request it was serving is retried once, alone, in
    a one-off subprocess, so that only a file that breaks its own subprocess too gets `DecoderUnavailable`. A caller
    that is cancelled (client gone) leaves its decoder to finish (or stop) the file and return to the pool.
    Create, `await start()` on the event loop that will use it, `await close()` at the end.
    """

    def __init__(
        self, workers: int, timeout_s: float, memory_limit_bytes: int | None, decode_fn: wire.DecodeFn | None = None
    ) -> None:
        """Args:
        workers: subprocesses.
        timeout_s: per-file decode limit, seconds.
        memory_limit_bytes: RLIMIT_AS of each subprocess, or None.
        decode_fn: a top-level generator function like `decoder_child.decode_in_child`, importable by the child by
            module and name; defaults to that one (tests pass one that crashes or hangs).
        """
        self.decode_fn = decode_fn or wire.decode_in_child
        self.workers = workers
        self.timeout_s = timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self._idle: asyncio.Queue[_Decoder] | None = None
        self._live: set[_Decoder] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The pids of the pool's live subprocesses."""
        return sorted(d.pid for d in self._live)

    async def _spawn(self) -> _Decoder:
        decoder = await _Decoder.spawn(self.decode_fn, self.memory_limit_bytes)
        self._live.add(decoder)
        return decoder

    async def start(self) -> None:
        """Start every subprocess now (not on the first request). Call on the loop's thread: the children are
        tied to the spawning thread's life (PR_SET_PDEATHSIG)."""
        self._idle = asyncio.Queue()
        for decoder in await asyncio.gather(*(self._spawn() for _ in range(self.workers))):
            self._idle.put_nowait(decoder)

    def _discard(self, decoder: _Decoder) -> None:
        """Kill a decoder whose state is unknown and start its replacement in the background."""
        decoder.kill()
        self._live.discard(decoder)
        loop = asyncio.get_running_loop()
        retire = loop.create_task(decoder.wait(), name="retire decoder")
        for task in (retire, loop.create_task(self._replace(), name="replace decoder")):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        delay_s = 0.5
        while not self._closed:
            try:
                decoder = await self._spawn()
            except Exception as exc:  # noqa: BLE001 - keep trying: requests are waiting for a decoder
                log.error("could not start an audio decoder (%s); retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(10.0, delay_s * 2)
                continue
            assert self._idle is not None
            self._idle.put_nowait(decoder)
            return

    async def _exchange(
        self, decoder: _Decoder, data: bytes, max_duration_s: float, reserve: Reserve | None
    ) -> DecodedAudio:
        """One request on a pooled decoder, which goes back to the pool, or is replaced if it failed."""
        try:
            result = await asyncio.wait_for(decoder.decode(data, max_duration_s, reserve), self.timeout_s)
        except ParakeetError:
            self._give_back(decoder) if decoder.protocol.in_sync else self._discard(decoder)
            raise
        except BaseException:  # died, timed out, or cancelled mid-exchange: its pipes are out of step
            self._discard(decoder)
            raise
        self._give_back(decoder)
        return result

    def _give_back(self, decoder: _Decoder) -> None:
        if self._closed:
            decoder.kill()
        else:
            assert self._idle is not None
            self._idle.put_nowait(decoder)

    async def decode(self, data: bytes, *, max_duration_s: float, reserve: Reserve | None = None) -> DecodedAudio:
        """Decode `data` in a subprocess; same contract as `parakeet.pipeline.audio.decode_audio`.

        Args:
            reserve: asked for the waveform's bytes before they are produced (see `Reserve`); None: no budget.

        Raises:
            Everything `decode_audio` raises, what `reserve` raises, and DecoderUnavailable when the decoder crashed
            or timed out twice on this input.
        """
        if self._idle is None:
            raise RuntimeError("AudioDecoderPool.start() was not awaited")
        decoder = await self._idle.get()
        # Shielded: a caller cancelled mid-file (client gone) leaves the decoder to finish and return.
        exchange = asyncio.ensure_future(self._exchange(decoder, data, max_duration_s, reserve))
        exchange.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(exchange)
        except (_DecoderDied, TimeoutError) as exc:
            log.warning("audio decoder %s (%d bytes); replacing it", _failure(exc, self.timeout_s), len(data))
        # Retry alone in a one-off subprocess: a file that breaks the decoder again harms no other request.
        solo: _Decoder | None = None
        try:
            solo = await _Decoder.spawn(self.decode_fn, self.memory_limit_bytes)
            return await asyncio.wait_for(solo.decode(data, max_duration_s, reserve), self.timeout_s)
        except (_DecoderDied, TimeoutError) as exc:
            reason = _failure(exc, self.timeout_s)
            log.warning("audio decoder %s again on the same file (%d bytes); refusing it", reason, len(data))
            raise DecoderUnavailable(f"the audio decoder {reason} on this file") from None
        finally:
            if solo is not None:
                solo.kill()
                await solo.wait()

    async def close(self) -> None:
        """Stop every subprocess (a decoder busy with a file is killed)."""
        self._closed = True
        for task in list(self._tasks):
            if task.get_name() == "replace decoder":
                task.cancel()
        for decoder in list(self._live):
            decoder.kill()
        await asyncio.gather(*(d.wait() for d in self._live), *self._tasks, return_exceptions=True)
        self._live.clear()


def _retrieve(task: asyncio.Future[DecodedAudio]) -> None:
    """Mark a shielded exchange's outcome as seen (its caller may have gone): no 'never retrieved' noise."""
    if not task.cancelled():
        task.exception()


def _failure(exc: BaseException, timeout_s: float) -> str:
    return f"took longer than the limit of {timeout_s:g} s" if isinstance(exc, TimeoutError) else "crashed"
