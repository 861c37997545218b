"""The audio-decoder subprocess: reads files on stdin, writes their waveforms on stdout, one file at a time.

Run as `python -m parakeet.pipeline.decoder_child MODULE:FUNCTION MEMORY_LIMIT_BYTES` by
`parakeet.pipeline.decoder_pool`, which owns the other end. It imports no asyncio, no HTTP and no torch.

Protocol, per file (little-endian): parent -> child `Q n_bytes, d max_duration_s` + the file's bytes. Child -> parent,
either `1` + `Q n` + a pickled ParakeetError (refused before any sample), or `H` + `I rate_hz, I channels, B decoder,
Q expected_samples` (UNKNOWN_LENGTH when the container does not say); the parent answers one byte, `G` (go on) or
`S` (stop: the request's memory budget cannot hold it), and after `S` the child answers `X` and waits for the next
file. After `G`: blocks `B` + `Q n` + n float32 samples, ended by `E`, or by `1` + a pickled error (refused
mid-file). The child streams the samples as it decodes them, so it never holds the file's whole waveform: the
parent writes them straight into the one waveform buffer it reserved. A child that dies (EOF) crashed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import importlib
import os
import pickle
import resource
import signal
import struct
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from parakeet.core.engine import Waveform
from parakeet.core.errors import ParakeetError, UnsupportedAudio
from parakeet.pipeline.audio import DECODERS, AudioHeader, iter_audio

REQUEST = struct.Struct("<Qd")
HEADER = struct.Struct("<IIBQ")
LENGTH = struct.Struct("<Q")
UNKNOWN_LENGTH = 2**64 - 1
READY, REFUSED, HEADER_TAG, BLOCK, END, STOPPED = b"R", b"1", b"H", b"B", b"E", b"X"
GO, STOP = b"G", b"S"

DecodeFn = Callable[[bytes, float], Iterator[AudioHeader | Waveform]]


def decode_in_child(data: bytes, max_duration_s: float) -> Iterator[AudioHeader | Waveform]:
    """The default decoder: `iter_audio`, with unexpected library failures on hostile input reported as the
    input's fault (415), not ours."""
    try:
        yield from iter_audio(data, max_duration_s=max_duration_s)
    except MemoryError:
        raise  # the address-space cap: the parent treats it as a crash and retries the file alone
    except (OSError, RuntimeError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise UnsupportedAudio(f"the file could not be decoded as audio ({type(exc).__name__})") from None


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
    """n bytes in one buffer (a buffered read of n fills one bytes object: no second copy of a large file), or
    None at a clean EOF before the first byte (the parent closed the pipe).

    Raises:
        EOFError: the pipe closed part-way.
    """
    data = stream.read(n)
    if not data and n:
        return None
    if len(data) != n:
        raise EOFError(f"pipe closed after {len(data)} of {n} bytes")
    return data


def _refuse(out: BinaryIO, exc: ParakeetError) -> None:
    payload = pickle.dumps(exc)
    out.write(REFUSED + LENGTH.pack(len(payload)) + payload)


def _serve_one(decode_fn: DecodeFn, data: bytes, max_duration_s: float, inp: BinaryIO, out: BinaryIO) -> None:
    """Decode one file and stream its answer (module docstring)."""
    items = decode_fn(data, max_duration_s)
    try:
        header = next(items)
    except ParakeetError as exc:
        _refuse(out, exc)
        return
    assert isinstance(header, AudioHeader)
    expected = UNKNOWN_LENGTH if header.expected_samples is None else header.expected_samples
    code = DECODERS.index(header.decoder)
    out.write(HEADER_TAG + HEADER.pack(header.source_sample_rate_hz, header.source_channels, code, expected))
    out.flush()
    if inp.read(1) != GO:
        out.write(STOPPED)
        return
    try:
        for block in items:
            assert isinstance(block, np.ndarray)
            if len(block):
                w = np.ascontiguousarray(block, dtype=np.float32)
                out.write(BLOCK + LENGTH.pack(len(w)))
                out.write(w.data.cast("B"))  # contiguous float32: its bytes, without a copy
    except ParakeetError as exc:
        _refuse(out, exc)
        return
    out.write(END)


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
    out.write(READY)
    out.flush()
    while (head := _read_exact(inp, REQUEST.size)) is not None:
        n, max_duration_s = REQUEST.unpack(head)
        data = _read_exact(inp, n) or b""
        _serve_one(decode_fn, data, max_duration_s, inp, out)
        del data
        out.flush()


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]))
