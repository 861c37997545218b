"""The decoding half of a buffered streaming step: each stream's window of encoder frames decoded from its carried
TDT decoder state, committed, then its right context decoded speculatively for the partial text. The pattern is
NeMo's `BufferedRNNTPipeline` (nemo/collections/asr/inference/pipelines/buffered_rnnt_pipeline.py; docs/streaming.md);
the engine runs the encoder (`ParakeetEngine.stream_step`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from parakeet.core.engine import StepRequest, StepResult
from parakeet.engine.decoding import Decodings
from parakeet.engine.hypotheses import hyp_ids


def decode_stream_step(
    decodings: Decodings, frames: torch.Tensor, lengths: torch.Tensor, requests: Sequence[StepRequest]
) -> list[StepResult]:
    """Decode one step of B streams from their encoder frames.

    Boosted streams (with key phrases) decode apart from plain ones: a boosted stream's decoder state carries its
    boosting tree's, and plain streams keep the model's own decoding.

    Args:
        decodings: the engine's decodings.
        frames: encoder frames [B, T, D] in the engine's dtype, each window's from its start.
        lengths: valid frames per window [B] int64.
        requests: the B streams' steps (`StepRequest`), in the same order.

    Returns:
        B results in request order.

    Raises:
        ValueError: a window has fewer frames than its `left_frames + commit_frames`.
    """
    boosted = [i for i, r in enumerate(requests) if r.keywords is not None]
    if not boosted:
        return decode_group(decodings, frames, lengths, requests)
    plain = [i for i, r in enumerate(requests) if r.keywords is None]
    by_index: dict[int, StepResult] = {}
    for group, boosting in ((plain, False), (boosted, True)):
        if group:
            at = torch.tensor(group, device=frames.device)
            got = decode_group(decodings, frames[at], lengths[at], [requests[i] for i in group], boosting)
            by_index.update(zip(group, got, strict=True))
    return [by_index[i] for i in range(len(requests))]


def decode_group(
    decodings: Decodings,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    requests: Sequence[StepRequest],
    boosting: bool = False,
) -> list[StepResult]:
    """Streams that all decode alike: encoder frames [B, T, D] and their valid lengths [B] to each stream's
    committed tokens, texts and new decoder state, by the TDT label-looping computer (NeMo's
    `merge_to_batched_state` / `split_batched_state`: streams may join or leave at any step; a TDT duration that
    overshoots the chunk is carried as `time_jumps`). `boosting`: every request carries key phrases, decoded by
    the boosting decoding's computer with each stream's tree (as `BufferedRNNTPipeline` passes
    `multi_biasing_ids`).

    Raises:
        ValueError: a window has fewer frames than its `left_frames + commit_frames`.
    """
    device = enc.device
    n_frames, dim = enc.shape[1], enc.shape[2]
    available = [int(n) - r.left_frames for n, r in zip(enc_lens.tolist(), requests, strict=True)]
    commit = [a if r.commit_frames is None else r.commit_frames for a, r in zip(available, requests, strict=True)]
    for a, c, r in zip(available, commit, requests, strict=True):
        if c < 0 or c > a or r.left_frames < 0:
            raise ValueError(f"window of {len(r.window)} samples has {a} frames after {r.left_frames}; asked {c}")
    left_t = torch.tensor([r.left_frames for r in requests], device=device)
    commit_t = torch.tensor(commit, dtype=torch.int64, device=device)
    idx = (torch.arange(n_frames, device=device)[None, :] + left_t[:, None]).clamp(max=n_frames - 1)
    chunk = enc.gather(1, idx[:, :, None].expand(-1, -1, dim))  # chunk frames first, [B, T, D]
    decoding = decodings.for_batch(False, boosting)
    computer = decoding.decoding.decoding_computer
    ids = None
    if boosting:
        trees = [decodings.compiled(decoding, r.keywords) for r in requests if r.keywords is not None]
        ids = torch.tensor([cfg.multi_model_id for cfg in trees], device=device)
    states = [r.state for r in requests]
    prev = None if all(s is None for s in states) else computer.merge_to_batched_state(list(states))
    hyps, batched_state = computer(x=chunk, out_len=commit_t, prev_batched_state=prev, multi_biasing_ids=ids)
    new_states = computer.split_batched_state(batched_state)[: len(requests)]  # CUDA graphs: see hyp_ids
    spec_lens = [a - c for a, c in zip(available, commit, strict=True)]
    spec_ids: list[list[int]] = [[] for _ in requests]
    if any(spec_lens):
        spec_idx = (idx + commit_t[:, None]).clamp(max=n_frames - 1)
        spec_frames = enc.gather(1, spec_idx[:, :, None].expand(-1, -1, dim))
        spec_hyps, _ = computer(
            x=spec_frames,
            out_len=torch.tensor(spec_lens, dtype=torch.int64, device=device),
            prev_batched_state=computer.merge_to_batched_state(list(new_states)),
            multi_biasing_ids=ids,
        )
        spec_ids = hyp_ids(spec_hyps, len(requests))
    return _results(decodings.model.tokenizer, requests, hyp_ids(hyps, len(requests)), spec_ids, new_states, commit)


def _results(
    tokenizer: Any,
    requests: Sequence[StepRequest],
    committed_ids: list[list[int]],
    spec_ids: list[list[int]],
    new_states: Sequence[Any],
    commit: list[int],
) -> list[StepResult]:
    results = []
    for r, new, spec, state, c in zip(requests, committed_ids, spec_ids, new_states, commit, strict=True):
        tokens = r.tokens + tuple(new)
        committed_text = tokenizer.ids_to_text(list(tokens)) if tokens else ""
        text = tokenizer.ids_to_text(list(tokens) + spec) if spec else committed_text
        results.append(StepResult(tokens, committed_text, text, state, c))
    return results
