"""long_audio.py: cuts land in silence, chunks cover the file with context, and merging keeps every word
exactly once in file time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.pipeline.long_audio import Chunk, merge_transcripts, plan_chunks

SR = 16_000


def speechlike(seconds: float, pauses: list[tuple[float, float]]) -> np.ndarray:
    """Noise everywhere except the given (start, end) pauses, which are silent."""
    w = (0.3 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)
    for a, b in pauses:
        w[int(a * SR) : int(b * SR)] = 0
    return w


def test_long_audio_short_file_is_one_chunk() -> None:
    chunks = plan_chunks(np.zeros(SR * 50, dtype=np.float32), chunk_s=60, context_s=2, search_s=4)
    assert chunks == [Chunk(0, SR * 50, float("-inf"), float("inf"))]


def test_long_audio_cuts_land_in_the_pauses() -> None:
    pauses = [(57.5, 58.0), (113.0, 113.6), (171.2, 171.5)]
    w = speechlike(200, pauses)
    chunks = plan_chunks(w, chunk_s=60, context_s=2, search_s=4)
    cuts = [c.keep_end_s for c in chunks[:-1]]
    assert len(cuts) == 3
    for cut, (a, b) in zip(cuts, pauses, strict=True):
        assert a <= cut <= b, (cut, a, b)
    # consecutive chunks share the cut; each hears 2 s beyond it; together they cover the file
    for left, right in zip(chunks, chunks[1:], strict=False):
        assert left.keep_end_s == right.keep_start_s
        assert left.end == round(left.keep_end_s * SR) + 2 * SR or left.end == len(w)
        assert right.start == round(right.keep_start_s * SR) - 2 * SR
    assert chunks[0].start == 0 and chunks[-1].end == len(w)
    assert all(c.end - c.start <= (60 + 4) * SR for c in chunks)


def test_long_audio_merge_keeps_each_word_once_in_file_time() -> None:
    chunks = [Chunk(0, 62 * SR, float("-inf"), 60.0), Chunk(58 * SR, 100 * SR, 60.0, float("inf"))]
    # word "b" (59.0-59.5 s) is heard by both chunks; "c" (60.5-61.0 s) too; each must appear once
    first = Transcript(
        "a b c", 3, 0, words=(TimedSpan("a", 10, 10.5), TimedSpan("b", 59, 59.5), TimedSpan("c", 60.5, 61))
    )
    second = Transcript("b c d", 3, 0, words=(TimedSpan("b", 1, 1.5), TimedSpan("c", 2.5, 3), TimedSpan("d", 20, 20.4)))
    merged = merge_transcripts(chunks, [first, second])
    assert merged.text == "a b c d"
    assert [(w.text, w.start_s) for w in merged.words] == [("a", 10), ("b", 59), ("c", 60.5), ("d", 78)]


def test_long_audio_single_chunk_merge_is_the_transcript_itself() -> None:
    t = Transcript("x y", 2, 10, words=(TimedSpan("x", 0, 1), TimedSpan("y", 1, 2)))
    assert merge_transcripts([Chunk(0, SR, float("-inf"), float("inf"))], [t]) is t


# --- end to end: a 20-minute file through a real server ------------------------------------------------------


def twenty_minutes(seed: int = 3) -> tuple[bytes, str]:
    """~20 minutes of digit utterances (training voices) separated by 0.5-1.5 s pauses, as 16-bit WAV."""
    import io
    import random

    import soundfile as sf

    import speech

    rng = random.Random(seed)
    parts, words, total = [], [], 0
    while total < 20 * 60 * SR:
        pause = np.zeros(int(rng.uniform(0.5, 1.5) * SR), dtype=np.float32)
        utt = speech.random_utterance(rng.randrange(10**8))
        parts += [pause, utt.waveform]
        words.append(utt.text)
        total += len(pause) + len(utt.waveform)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue(), " ".join(words)


def _vm_hwm_mib(pid: int) -> float:
    from pathlib import Path

    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_long_audio_twenty_minutes_transcribes_completely_with_bounded_memory(
    tmp_path: Path, digits_model_path: Path
) -> None:
    import threading
    import time

    import httpx
    import jiwer

    from helpers import start_server
    from media import wav_bytes

    wav, reference = twenty_minutes()
    server = start_server(tmp_path, {"PARAKEET_MODEL": str(digits_model_path), "PARAKEET_TORCH_THREADS": "2"})
    try:
        server.wait_ready()
        worker = server.proc.pid  # one worker: uvicorn runs it in its own process
        before = _vm_hwm_mib(worker)
        out: dict[str, object] = {}

        def long_request() -> None:
            t0 = time.perf_counter()
            r = httpx.post(
                f"{server.url}/transcribe", files={"file": ("long.wav", wav)}, data={"timestamps": "true"}, timeout=600
            )
            out["response"], out["seconds"], out["done_at"] = r, time.perf_counter() - t0, time.perf_counter()

        thread = threading.Thread(target=long_request)
        thread.start()
        for _ in range(600):  # until its chunks are queued
            if httpx.get(f"{server.url}/health", timeout=5).json()["queued_audio_s"] > 0:
                break
            time.sleep(0.05)
        short = httpx.post(f"{server.url}/transcribe", files={"file": ("s.wav", wav_bytes(speech_clip()))}, timeout=600)
        short_done = time.perf_counter()
        thread.join(600)
        r = out["response"]
        assert isinstance(r, httpx.Response) and r.status_code == 200, r
        body = r.json()
        peak = _vm_hwm_mib(worker)
    finally:
        server.stop()
    hyp = body["text"]
    measures = jiwer.process_words(reference, hyp)
    print(
        f"20-minute file ({body['duration_sec']:.0f} s, {len(reference.split())} digits): {out['seconds']:.1f} s, "
        f"{body['chunks']} chunks, WER {measures.wer:.2%} ({measures.substitutions} sub, {measures.deletions} del, "
        f"{measures.insertions} ins); worker peak RSS {before:.0f} MiB before, {peak:.0f} MiB after"
    )
    assert body["duration_sec"] >= 1200 and body["chunks"] > 1
    assert short.status_code == 200 and short_done < out["done_at"]  # the short request did not wait for it
    words = body["timestamps"]["word"]
    assert [w["word"] for w in words] == hyp.split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and starts[0] >= 0 and words[-1]["end"] <= body["duration_sec"]
    # Every digit in order, but for the test model's own rare slips (~0.1-0.3% on such files); and none of
    # those slips at a seam: no word lost or doubled within 3 s of a cut.
    assert measures.wer <= 0.01
    import io

    import soundfile as sf

    wave, _ = sf.read(io.BytesIO(wav), dtype="float32")
    cuts = [c.keep_end_s for c in plan_chunks(wave, chunk_s=60, context_s=2, search_s=4)[:-1]]
    assert len(cuts) == body["chunks"] - 1
    for align in measures.alignments[0]:
        if align.type == "equal":
            continue
        near = words[min(align.hyp_start_idx, len(words) - 1)]["start"]
        assert min(abs(near - c) for c in cuts) > 3.0, (align, near, cuts)
    assert peak - before < 1024  # full attention over 15,000 frames would need GBs per layer


def speech_clip() -> np.ndarray:
    import speech

    return speech.speak("one two three", "en-us", 160)
