"""NeMo hypotheses to the project's records: word/segment/token timestamps (ours or NeMo's own code), word and token
confidence, token ids of a batched hypothesis."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

from parakeet.core.timestamps import HypothesisTimestamps, TokenTable, tdt_timestamps
from parakeet.core.transcripts import TimedSpan

NO_TIMESTAMPS = HypothesisTimestamps((), (), ())


def token_table(decoding: Any, window_stride_s: float, subsampling_factor: int) -> TokenTable | None:
    """The model's `TokenTable` for `parakeet.core.timestamps`, or None where its decoding is one that module does
    not reproduce (then NeMo's own timestamp code runs): it covers TDT with a SentencePiece BPE tokenizer, the
    word separator " " and no segment gap threshold, which is Parakeet-TDT's (and the test models') decoding."""
    tokenizer = getattr(decoding, "tokenizer", None)
    if tokenizer is None or not getattr(decoding, "_is_tdt", False):
        return None
    if decoding.word_seperator != " " or decoding.segment_gap_threshold or decoding.tokenizer_type != "bpe":
        return None
    if decoding.supported_punctuation is None:
        return None
    ids = list(range(int(decoding.blank_id)))
    return TokenTable(
        pieces=[decoding.decode_ids_to_tokens([i])[0] for i in ids],
        texts=[decoding.decode_ids_to_str([i]) for i in ids],
        punctuation=frozenset(decoding.supported_punctuation),
        decode_pieces=decoding.decode_tokens_to_str,
        blank_id=int(decoding.blank_id),
        segment_delimiters=tuple(decoding.segment_seperators),
        window_stride_s=window_stride_s,
        subsampling_factor=subsampling_factor,
    )


def hypothesis_timestamps(
    decoding: Any, hyp: Any, table: TokenTable | None, window_stride_s: float, subsampling_factor: int
) -> HypothesisTimestamps:
    """One hypothesis' word, segment and token timestamps: `parakeet.core.timestamps.tdt_timestamps` over `table`,
    or (table None) NeMo's `compute_rnnt_timestamps(hyp, "all")` and `process_timestamp_outputs`, which give the
    same (tests/unit/test_timestamps.py). NeMo's path rewrites `hyp` in place."""
    if table is not None:
        return tdt_timestamps(as_list(hyp.y_sequence), as_list(hyp.timestamp), as_list(hyp.token_duration), table)
    timed = decoding.compute_rnnt_timestamps(hyp, "all")
    process_timestamp_outputs([timed], subsampling_factor, window_stride_s)  # in place
    return HypothesisTimestamps(nemo_spans(timed, "word"), nemo_spans(timed, "segment"), nemo_spans(timed, "char"))


def nemo_spans(hyp: Any, kind: str) -> tuple[TimedSpan, ...]:
    """NeMo's hyp.timestamp[kind] entries ({kind: text, "start": s, "end": s}) as TimedSpans."""
    entries = (getattr(hyp, "timestamp", None) or {}).get(kind) or []
    out = []
    for e in entries:
        text = e.get(kind)
        if isinstance(text, list):  # "char" entries hold a list of characters/subwords
            text = "".join(text)
        out.append(TimedSpan(str(text), round(float(e["start"]), 3), round(float(e["end"]), 3)))
    return tuple(out)


def with_confidence(spans: tuple[TimedSpan, ...], scores: Any) -> tuple[TimedSpan, ...]:
    """Words with NeMo's word confidence, when it has one per word (else the words as they are)."""
    values = [float(c) for c in (scores or [])]
    if len(values) != len(spans):
        return spans
    return tuple(replace(span, confidence=round(c, 4)) for span, c in zip(spans, values, strict=True))


def token_scores(hyp: Any, chars: tuple[TimedSpan, ...], tokenizer: Any, num_classes: int) -> tuple[TimedSpan, ...]:
    """The hypothesis' tokens (its "char" timestamps, spelled as the tokenizer's pieces: SentencePiece marks a word
    start with U+2581) with their confidence c and log-probability log(p), p = (c (V - 1) + 1) / V inverting the
    max_prob normalisation (V = `num_classes`, the token classes with blank)."""
    scores = [float(c) for c in (hyp.token_confidence or [])]
    ids = as_list(hyp.y_sequence)
    pieces = tokenizer.ids_to_tokens(ids) if ids else []
    if not len(scores) == len(chars) == len(pieces):
        return chars
    v = num_classes
    return tuple(
        replace(span, text=piece, confidence=round(c, 4), logprob=round(math.log(max((c * (v - 1) + 1) / v, 1e-12)), 4))
        for span, c, piece in zip(chars, scores, pieces, strict=True)
    )


def as_list(values: Any) -> list[int]:
    """A hypothesis field (tensor, list or None) as a list of ints."""
    if values is None:
        return []
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def hyp_ids(hyps: Any, batch_size: int) -> list[list[int]]:
    """Token ids of the first `batch_size` items of NeMo's `BatchedHyps` (transcript [B', L] padded,
    current_lengths [B']). With CUDA graphs B' is the graphs' allocated batch, which may exceed the real batch (as
    NeMo's own `batched_hyps_to_hypotheses(..., batch_size=x.shape[0])` says: nemo/collections/asr/parts/utils/
    rnnt_utils.py)."""
    lengths = hyps.current_lengths[:batch_size].tolist()
    rows = hyps.transcript[:batch_size].tolist()
    return [row[:n] for row, n in zip(rows, lengths, strict=True)]
