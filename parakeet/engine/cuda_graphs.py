"""`PARAKEET_CUDA_GRAPHS`: NeMo's CUDA-graph TDT decoder, served only when a start-up self-check finds that it changes
nothing (issue 20; BENCHMARKS.md "GPU (H100)": graphs gave the same texts on 2026-11-22, and crashed on PyTorch 2.10
before that, so the check runs at every start rather than trusting a version)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from parakeet.core.engine import StepRequest, StepResult
from parakeet.core.keywords import KeyPhrases
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.engine.asr import ParakeetEngine

log = logging.getLogger("parakeet.engine")

# The probe: offline batches of mixed lengths at these sizes, and streams leaving a batch step by step.
CHECK_BATCH_SIZES = (1, 3, 16)
CHECK_STREAMS = 4
CHECK_SEED = 20

Probe = tuple[list[list[Transcript]], list[list[StepResult]]]


def cuda_graphs_self_check(engine: ParakeetEngine) -> tuple[str | None, str]:
    """Decode a fixed probe with CUDA graphs off and then on, and compare.

    The probe is seeded random encoder output (graphs change only the decoder, and random frames make it emit
    many tokens): offline batches of sizes 1, 3 and 16 with mixed lengths (8-200 frames) with word timestamps, the
    size-3 batch again with confidence and again with key phrases on two items (NeMo's per-stream boosting, a
    decoding of its own), and streaming steps of a batch of 4 streams that shrinks to 3 and then 2
    (carried decoder states, speculative right context, a final step). Leaves the engine with graphs on.

    Returns:
        (problem, summary): problem is None when every token, text, word/segment/token timestamp, confidence
        (within 1e-3) and step result is equal, else one line saying what raised or the first difference;
        summary counts what was compared.
    """
    rng = np.random.default_rng(CHECK_SEED)
    d_model = int(engine.model.cfg.encoder.d_model)

    def encoder_output(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = torch.from_numpy(rng.standard_normal((len(lengths), d_model, max(lengths))).astype(np.float32))
        return enc.to(engine.device, engine.dtype), torch.tensor(lengths, dtype=torch.int64, device=engine.device)

    offline = [encoder_output([int(n) for n in rng.integers(8, 200, size=b)]) for b in CHECK_BATCH_SIZES]
    boosted: list[KeyPhrases | None] = []  # the size-3 batch's key phrases (per-stream boosting), set by the first run
    stream_enc = encoder_output([60] * CHECK_STREAMS)[0].transpose(1, 2).contiguous()  # [S, 60, D]

    def run() -> Probe:
        with torch.inference_mode():
            return _offline_probe(engine, offline, boosted), _stream_probe(engine, stream_enc)

    engine.set_cuda_graphs(False)
    ref_out, ref_steps = run()
    engine.set_cuda_graphs(True)
    n_tokens = sum(t.num_tokens for batch in ref_out for t in batch)
    summary = f"{sum(len(b) for b in ref_out)} items, {n_tokens} tokens, {sum(len(s) for s in ref_steps)} stream steps"
    try:
        got_out, got_steps = run()
    except Exception as exc:  # noqa: BLE001 - any failure of the graph decoder means: serve without it
        return f"the CUDA-graph decoder raised {type(exc).__name__}: {exc}", summary
    return first_difference(ref_out, got_out, ref_steps, got_steps), summary


def _offline_probe(
    engine: ParakeetEngine, offline: list[tuple[torch.Tensor, torch.Tensor]], boosted: list[KeyPhrases | None]
) -> list[list[Transcript]]:
    outs = [engine.decode_encoded(enc, lens, [True] * len(lens))[0] for enc, lens in offline]
    enc, lens = offline[1]
    outs.append(engine.decode_encoded(enc, lens, [True] * len(lens), [True] * len(lens))[0])
    if not boosted:  # the first run (graphs off) picks phrases the tokenizer spells: words it emitted
        words = [w for t in outs[1] for w in t.text.split()]
        boosted[:] = [KeyPhrases((" ".join(words[:2]),)) if words else None, None,
                      KeyPhrases(tuple(dict.fromkeys(words[2:5])), 2.0) if words[2:5] else None]  # fmt: skip
    outs.append(engine.decode_encoded(enc, lens, [True] * len(lens), None, boosted)[0])
    return outs


def _stream_probe(engine: ParakeetEngine, stream_enc: torch.Tensor) -> list[list[StepResult]]:
    steps: list[list[StepResult]] = []
    states: list[Any] = [None] * CHECK_STREAMS
    tokens: list[tuple[int, ...]] = [()] * CHECK_STREAMS
    for k, (left, commit) in enumerate([(0, 20), (10, 20), (20, None)]):
        n = CHECK_STREAMS - k
        window = np.zeros(1, dtype=np.float32)  # the decoder never reads the samples
        reqs = [StepRequest(window, left, commit, states[i], tokens[i]) for i in range(n)]
        frames = stream_enc[:n, k * 20 : k * 20 + 40]
        lens = torch.full((n,), frames.shape[1], dtype=torch.int64, device=engine.device)
        got = engine.decode_step(frames, lens, reqs)
        states, tokens = [r.state for r in got], [r.tokens for r in got]
        steps.append(got)
    return steps


def first_difference(
    ref_out: list[list[Transcript]],
    got_out: list[list[Transcript]],
    ref_steps: list[list[StepResult]],
    got_steps: list[list[StepResult]],
) -> str | None:
    """The first difference between the probe's outputs without and with graphs, as one line (None: equal)."""
    for b, (ref, got) in enumerate(zip(ref_out, got_out, strict=True)):
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            for name in ("text", "num_tokens", "encoder_frames", "segments"):
                if getattr(r, name) != getattr(g, name):
                    return f"offline batch {b} item {i}: {name} differs ({getattr(r, name)!r} vs {getattr(g, name)!r})"
            for name in ("words", "chars"):
                if (problem := _spans_differ(getattr(r, name), getattr(g, name))) is not None:
                    return f"offline batch {b} item {i}: {name} differ ({problem})"
    for k, (ref_s, got_s) in enumerate(zip(ref_steps, got_steps, strict=True)):
        for i, (rs, gs) in enumerate(zip(ref_s, got_s, strict=True)):
            if (rs.tokens, rs.text, rs.committed_frames) != (gs.tokens, gs.text, gs.committed_frames):
                return f"stream step {k} stream {i}: {rs.tokens} {rs.text!r} vs {gs.tokens} {gs.text!r}"
    return None


def _spans_differ(ref: tuple[TimedSpan, ...], got: tuple[TimedSpan, ...]) -> str | None:
    for x, y in zip(ref, got, strict=False):
        same_conf = (x.confidence is None) == (y.confidence is None) and (
            x.confidence is None or y.confidence is None or abs(x.confidence - y.confidence) <= 1e-3
        )
        if (x.text, x.start_s, x.end_s) != (y.text, y.start_s, y.end_s) or not same_conf:
            return f"{x} vs {y}"
    if len(ref) != len(got):
        return f"{len(ref)} vs {len(got)}"
    return None


def choose_cuda_graphs(engine: ParakeetEngine, mode: str, cuda: bool) -> None:
    """Apply `PARAKEET_CUDA_GRAPHS` (`mode`: "auto", "true" or "false") to the engine, and say why in
    `engine.cuda_graphs_reason` (shown by /health, the `parakeet_build_info` metric and the start-up log).

    auto on a CUDA device runs `cuda_graphs_self_check` and serves with graphs only if it found no difference;
    otherwise one WARNING line says what failed or differed and graphs stay off. On a CPU, auto means off.
    """
    if not cuda:
        engine.set_cuda_graphs(False)
        engine.cuda_graphs_reason = "not a CUDA device"
    elif mode == "false":
        engine.set_cuda_graphs(False)
        engine.cuda_graphs_reason = "off: PARAKEET_CUDA_GRAPHS=false"
    elif mode == "true":
        engine.set_cuda_graphs(True)
        engine.cuda_graphs_reason = "on: PARAKEET_CUDA_GRAPHS=true"
    else:
        problem, summary = cuda_graphs_self_check(engine)
        if problem is None:
            engine.cuda_graphs_reason = f"on: the self-check found no difference ({summary})"
        else:
            engine.set_cuda_graphs(False)
            engine.cuda_graphs_reason = f"off: the self-check failed: {problem}"
            log.warning("CUDA graphs off: the start-up self-check failed (%s): %s", summary, problem)
    log.info("TDT decoder, CUDA graphs: %s", engine.cuda_graphs_reason)
