"""Audio decoding in subprocesses, driven straight from the event loop.

libsndfile and FFmpeg have a history of crashes on crafted files; a crash in the worker itself would take its
loaded model and every request in it down. So each worker keeps a few decoder subprocesses, each with an
address-space cap, and talks to each over its stdin/stdout pipes with a small binary protocol read and
written by asyncio: no executor threads and no pickling of the upload or the waveform (BENCHMARKS.md, "Front
end": the ProcessPoolExecutor this replaces cost about 4 ms per request, mostly in its helper threads).

Protocol, per request (little-endian): parent -> child `Q n_bytes, d max_duration_s` + the file's bytes;
child -> parent one status byte, then for `b"0"` (decoded) `I source_rate_hz, I channels, B decoder, Q n`
+ n float32 samples, for `b"1"` (refused) `Q n` + a pickled ParakeetError. A child that dies (EOF) crashed.
Run as `python -m parakeet.pipeline.decoder_pool MODULE:FUNCTION MEMORY_LIMIT_BYTES` it is the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import importlib
import logging
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import BinaryIO, cast

import numpy as np

from parakeet.core.errors import DecoderUnavailable, ParakeetError, UnsupportedAudio
from parakeet.pipeline.audio import DecodedAudio, decode_audio

log = logging.getLogger("parakeet.audio")

DecodeFn = Callable[[bytes, float], DecodedAudio]
_REQUEST = struct.Struct("<Qd")
_DECODED = struct.Struct("<IIBQ")
_LENGTH = struct.Struct("<Q")
_DECODERS = ("soundfile", "pyav")
_READY = b"R"


def decode_in_child(data: bytes, max_duration_s: float) -> DecodedAudio:
    """The default decoder: `decode_audio`, with unexpected library failures on hostile input reported as
    the input's fault (415), not ours."""
    try:
        return decode_audio(data, max_duration_s=max_duration_s)
    except MemoryError:
        raise  # the address-space cap: the parent treats it as a crash and retries the file alone
    except (OSError, RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise UnsupportedAudio(f"the file could not be decoded as audio ({type(exc).__name__})") from None


class _DecoderDied(Exception):
    """The subprocess exited, or its pipe broke, in the middle of a request."""


class _DecoderProtocol(asyncio.SubprocessProtocol):
    """Reads the child's answers straight into their final buffers: the samples land in the waveform array
    as they arrive (one copy per pipe read), with none of StreamReader's buffer growth and slicing, which a
    profile of the worker under load put at ~13% of the event loop. Also the write side's flow control."""

    def __init__(self) -> None:
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self._answer: asyncio.Future[object] | None = None
        self._stage = ""
        self._target = memoryview(bytearray(0))
        self._pos = 0
        self._meta: tuple[int, int, int] = (0, 0, 0)
        self._samples: np.ndarray | None = None
        self._dead: str | None = None

    def expect(self, stage: str) -> asyncio.Future[object]:
        """Start reading one answer: "ready" (the start-up byte) or "status" (a decode answer)."""
        self._answer = asyncio.get_running_loop().create_future()
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
            if self._answer is None or self._answer.done():
                self._fail("the decoder wrote output nobody asked for")
                return
            k = min(len(view), len(self._target) - self._pos)
            self._target[self._pos : self._pos + k] = view[:k]
            self._pos += k
            view = view[k:]
            if self._pos == len(self._target):
                self._advance()

    def _advance(self) -> None:
        assert self._answer is not None
        got = b"" if self._stage == "samples" else bytes(self._target)
        if self._stage == "ready":
            if got == _READY:
                self._answer.set_result(None)
            else:
                self._fail(f"unexpected start-up byte {got!r} from the decoder")
        elif self._stage == "status":
            if got == b"0":
                self._read("decoded", _DECODED.size)
            elif got == b"1":
                self._read("length", _LENGTH.size)
            else:
                self._fail(f"unexpected status byte {got!r} from the decoder")
        elif self._stage == "decoded":
            rate, channels, decoder, n = _DECODED.unpack(got)
            self._meta = (rate, channels, decoder)
            self._samples = np.empty(n, dtype=np.float32)
            self._read("samples", 4 * n, self._samples.data.cast("B"))
        elif self._stage == "samples":
            rate, channels, decoder = self._meta
            assert self._samples is not None
            self._answer.set_result(DecodedAudio(self._samples, rate, channels, _DECODERS[decoder]))
            self._samples = None
        elif self._stage == "length":
            (n,) = _LENGTH.unpack(got)
            self._read("error", n)
        elif self._stage == "error":
            self._answer.set_result(pickle.loads(got))

    def _fail(self, why: str) -> None:
        self._dead = self._dead or why
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

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    @classmethod
    async def spawn(cls, decode_fn: DecodeFn, memory_limit_bytes: int | None) -> _Decoder:
        """Start a child and wait until it has imported its decoders (~0.3 s)."""
        ref = f"{decode_fn.__module__}:{decode_fn.__qualname__}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        transport, protocol = await asyncio.get_running_loop().subprocess_exec(
            _DecoderProtocol,
            sys.executable, "-m", "parakeet.pipeline.decoder_pool", ref, str(memory_limit_bytes or 0),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env,
        )  # fmt: skip
        decoder = cls(transport, protocol)
        try:
            await protocol.expect("ready")
        except BaseException:
            decoder.kill()
            transport.close()
            raise
        return decoder

    async def decode(self, data: bytes, max_duration_s: float) -> DecodedAudio:
        """Send one file, read its answer.

        Raises:
            ParakeetError: the decoder refused the file (the child's own exception).
            _DecoderDied: the child crashed or its pipe broke.
        """
        stdin = cast(asyncio.WriteTransport | None, self.transport.get_pipe_transport(0))
        if stdin is None or stdin.is_closing() or self.protocol.exited.done():
            raise _DecoderDied("the decoder's input pipe is closed")
        # (uvloop's pipe transports are not asyncio.WriteTransport subclasses, but have its methods)
        answer = self.protocol.expect("status")
        stdin.write(_REQUEST.pack(len(data), max_duration_s))
        stdin.write(data)
        await self.protocol.writable.wait()
        result = await answer
        if isinstance(result, DecodedAudio):
            return result
        assert isinstance(result, ParakeetError)
        raise result

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

    A decoder that crashes (SIGSEGV in libsndfile/FFmpeg, or a MemoryError at the cap) or runs past
    `timeout_s` costs only its subprocess: it is killed and replaced, and the request it was serving is
    retried once, alone, in a one-off subprocess, so that only a file that breaks its own subprocess too gets
    `DecoderUnavailable`. A caller that is cancelled (client gone) leaves its decoder to finish the file and
    return to the pool. Create, `await start()` on the event loop that will use it, `await close()` at the end.
    """

    def __init__(
        self, workers: int, timeout_s: float, memory_limit_bytes: int | None, decode_fn: DecodeFn | None = None
    ) -> None:
        """Args:
        workers: subprocesses.
        timeout_s: per-file decode limit, seconds.
        memory_limit_bytes: RLIMIT_AS of each subprocess, or None.
        decode_fn: a top-level function (data, max_duration_s) -> DecodedAudio, importable by the child by
            module and name; defaults to `decode_in_child` (tests pass one that crashes or hangs).
        """
        self.decode_fn = decode_fn or decode_in_child
        self.workers = workers
        self.timeout_s = timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self._idle: asyncio.Queue[_Decoder] | None = None
        self._live: set[_Decoder] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

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

    async def _exchange(self, decoder: _Decoder, data: bytes, max_duration_s: float) -> DecodedAudio:
        """One request on a pooled decoder, which goes back to the pool, or is replaced if it failed."""
        try:
            result = await asyncio.wait_for(decoder.decode(data, max_duration_s), self.timeout_s)
        except ParakeetError:
            self._give_back(decoder)
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

    async def decode(self, data: bytes, *, max_duration_s: float) -> DecodedAudio:
        """Decode `data` in a subprocess; same contract as `parakeet.pipeline.audio.decode_audio`.

        Raises:
            Everything `decode_audio` raises, and DecoderUnavailable when the decoder crashed or timed out
            twice on this input.
        """
        if self._idle is None:
            raise RuntimeError("AudioDecoderPool.start() was not awaited")
        decoder = await self._idle.get()
        # Shielded: a caller cancelled mid-file (client gone) leaves the decoder to finish and return.
        exchange = asyncio.ensure_future(self._exchange(decoder, data, max_duration_s))
        exchange.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(exchange)
        except (_DecoderDied, TimeoutError) as exc:
            log.warning("audio decoder %s (%d bytes); replacing it", _failure(exc, self.timeout_s), len(data))
        # Retry alone in a one-off subprocess: a file that breaks the decoder again harms no other request.
        solo: _Decoder | None = None
        try:
            solo = await _Decoder.spawn(self.decode_fn, self.memory_limit_bytes)
            return await asyncio.wait_for(solo.decode(data, max_duration_s), self.timeout_s)
        except (_DecoderDied, TimeoutError) as exc:
            reason = _failure(exc, self.timeout_s)
            log.warning("audio decoder %s again on the same file (%d bytes); refusing it", reason, len(data))
            raise DecoderUnavailable(f"the audio decoder {reason} on this file", param="file") from None
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


# --- the child ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that spawned it exits (prctl PR_SET_PDEATHSIG),
    so that decoders never outlive a worker that died by SIGKILL or os._exit."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (linux/prctl.h)
    except (OSError, AttributeError):  # not Linux: EOF on stdin still ends the child
        pass


def _widen_pipes() -> None:
    """Grow both pipes to 1 MiB (Linux F_SETPIPE_SZ; the default 64 KiB cuts a 15 s clip's samples into
    ~15 writes, each a wake-up of both processes). Capped by /proc/sys/fs/pipe-max-size; best effort."""
    for fd in (0, 1):
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    """n bytes, or None at a clean EOF before the first byte (the parent closed the pipe)."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            if got == 0:
                return None
            raise EOFError(f"pipe closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def child_main(ref: str, memory_limit_bytes: int) -> None:
    """Serve decode requests on stdin/stdout until stdin closes. Library chatter on fd 1 goes to stderr."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker handles Ctrl-C and shuts us down
    if memory_limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    _widen_pipes()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb")
    module, _, name = ref.partition(":")
    decode_fn: DecodeFn = getattr(importlib.import_module(module), name)
    out.write(_READY)
    out.flush()
    while (head := _read_exact(inp, _REQUEST.size)) is not None:
        n, max_duration_s = _REQUEST.unpack(head)
        data = _read_exact(inp, n) or b""
        try:
            decoded = decode_fn(data, max_duration_s)
        except ParakeetError as exc:
            payload = pickle.dumps(exc)
            out.write(b"1" + _LENGTH.pack(len(payload)) + payload)
        else:
            w = np.ascontiguousarray(decoded.waveform, dtype=np.float32)
            code = _DECODERS.index(decoded.decoder)
            out.write(b"0" + _DECODED.pack(decoded.source_sample_rate_hz, decoded.source_channels, code, len(w)))
            out.write(w.data.cast("B"))  # contiguous float32: its bytes, without a copy
        out.flush()


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]))
