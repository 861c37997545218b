"""Word, segment and token timestamps of a TDT hypothesis, from its token ids and frame offsets.

What NeMo's `AbstractRNNTDecoding.compute_rnnt_timestamps(hyp, "all")` followed by
`timestamp_utils.process_timestamp_outputs(...)` give for a TDT model with a SentencePiece BPE tokenizer
(nemo/collections/asr/parts/submodules/rnnt_decoding.py: `_compute_offsets_tdt`, `_refine_timestamps_tdt`;
nemo/collections/asr/parts/utils/timestamp_utils.py: `get_words_offsets`, `get_segment_offsets`), the same
words, start/end seconds, segments and token pieces, without its per-token Python: no tokenizer call per token
(the id -> piece and id -> text tables are built once per model), no deep copies of offset dicts, no scan of the
vocabulary per hypothesis (NeMo's `tokenizer_type` property), and a word's text decoded once per distinct piece
sequence (a bounded cache). Equality with NeMo's own output is tested over generated hypotheses and on real
model outputs (tests/unit/test_timestamps.py).

Plain Python over lists: a hypothesis has tens of tokens, so per-item overhead, not arithmetic, is the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from parakeet.core.transcripts import TimedSpan

_WORD_CACHE_MAX = 200_000  # distinct piece sequences kept (a word is a few pieces: a few MB at most)
_PIECE_SPACES = (" ", "_", "\u2581")  # NeMo strips one of these before a punctuation mark joins a word


@dataclass
class TokenTable:
    """A model's vocabulary as NeMo's timestamp code sees it, built once per model.

    Attributes:
        pieces: token id -> the tokenizer's piece (`decode_ids_to_tokens([id])[0]`, e.g. "\u2581hel").
        texts: token id -> that token decoded alone (`decode_ids_to_str([id])`, e.g. "hel").
        punctuation: the decoding's `supported_punctuation` (punctuation characters in the vocabulary).
        decode_pieces: a word's pieces -> its text (`decode_tokens_to_str`, SentencePiece's `decode_pieces`).
        blank_id: the blank token's id (the vocabulary size for TDT); blanks carry no timestamp.
        segment_delimiters: a word ending in (or equal to) one of these ends a segment (`segment_seperators`).
        frame_s: seconds per encoder frame (window stride x subsampling: 0.01 x 8 for Parakeet), given as the
            two factors so that seconds are computed in NeMo's order, `offset * window_stride * subsampling`.

    Raises (construction):
        ValueError: `pieces` and `texts` of different lengths.
    """

    pieces: Sequence[str]
    texts: Sequence[str]
    punctuation: frozenset[str]
    decode_pieces: Callable[[list[str]], str]
    blank_id: int
    segment_delimiters: tuple[str, ...]
    window_stride_s: float
    subsampling_factor: int
    starts_word: list[bool] = field(init=False, repr=False)  # per id: its piece differs from its text
    is_mark: list[bool] = field(init=False, repr=False)  # per id: its text is a supported mark (and not " ")
    _words: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False)
    _seconds: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.texts):
            raise ValueError(f"{len(self.pieces)} pieces but {len(self.texts)} texts")
        # A token starts a word when its piece differs from its text (SentencePiece's word-start mark, or any
        # piece the tokenizer spells differently) or it is a bare space not followed by punctuation.
        self.starts_word = [p != t for p, t in zip(self.pieces, self.texts, strict=True)]
        self.is_mark = [bool(self.punctuation) and t in self.punctuation and t != " " for t in self.texts]

    def word(self, pieces: list[str]) -> str:
        """The text of a word made of these pieces (cached)."""
        key = tuple(pieces)
        text = self._words.get(key)
        if text is None:
            if len(self._words) >= _WORD_CACHE_MAX:
                self._words.clear()
            text = self._words[key] = self.decode_pieces(pieces)
        return text

    def seconds(self, offset: int) -> float:
        """An offset in encoder frames as NeMo's seconds (`offset * window_stride * subsampling`), rounded to
        the millisecond as the server reports it."""
        table = self._seconds  # offsets are frame indices (>= 0): a list grown on demand
        while len(table) <= offset:
            table.append(round(len(table) * self.window_stride_s * self.subsampling_factor, 3))
        return table[offset]


@dataclass(frozen=True)
class HypothesisTimestamps:
    """One hypothesis' timestamps, in seconds from the start of its audio (rounded to 1 ms)."""

    words: tuple[TimedSpan, ...]
    segments: tuple[TimedSpan, ...]
    chars: tuple[TimedSpan, ...]


_EMPTY = HypothesisTimestamps((), (), ())


def tdt_timestamps(
    token_ids: Sequence[int], frames: Sequence[int], durations: Sequence[int], table: TokenTable
) -> HypothesisTimestamps:
    """Word, segment and token ("char") timestamps of one TDT hypothesis.

    Args:
        token_ids: the hypothesis' token ids (`hyp.y_sequence`), blanks allowed (skipped).
        frames: the encoder frame at which each token was emitted (`hyp.timestamp`), same length or longer.
        durations: each token's predicted duration in encoder frames (`hyp.token_duration`).
        table: the model's `TokenTable`.

    Returns:
        Words (text with its punctuation, start of its first token to end of its last), segments (words joined
        by spaces, ended by a word ending in a segment delimiter), and tokens (text decoded alone; a punctuation
        mark is pinned to the end of the token before it, as NeMo's `_refine_timestamps_tdt` does).

    Raises:
        ValueError: fewer frames or durations than non-blank tokens (NeMo raises the same).
    """
    blank = table.blank_id
    ids: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    for t, s, d in zip(token_ids, frames, durations, strict=False):  # as NeMo's zip: stops at the shortest
        if t != blank:
            ids.append(t)
            starts.append(s)
            ends.append(s + d)
    n_tokens = len(token_ids) - list(token_ids).count(blank)
    if len(ids) != n_tokens:
        raise ValueError(f"{len(ids)} token offsets for {n_tokens} non-blank tokens")
    n = len(ids)
    if n == 0:
        return _EMPTY
    tx = [table.texts[t] for t in ids]
    if table.punctuation:  # _refine_timestamps_tdt
        _pin_marks(tx, starts, ends, table.punctuation)
    w_text, w_start, w_end = _words(ids, tx, starts, ends, table)
    segments = _segments(w_text, w_start, w_end, table.segment_delimiters)
    sec = table.seconds
    return HypothesisTimestamps(
        words=tuple(TimedSpan(w, sec(s), sec(e)) for w, s, e in zip(w_text, w_start, w_end, strict=True)),
        segments=tuple(TimedSpan(t, sec(s), sec(e)) for t, s, e in segments),
        chars=tuple(TimedSpan(tx[i], sec(starts[i]), sec(ends[i])) for i in range(n)),
    )


def _pin_marks(tx: list[str], starts: list[int], ends: list[int], marks: frozenset[str]) -> None:
    """NeMo's `_refine_timestamps_tdt`, in place: a punctuation mark (its decoded text among the supported marks;
    NeMo tests the first item of a one-element list, i.e. the whole text) after the first token starts and ends
    where the token before it ends."""
    for i in range(1, len(tx)):
        if tx[i] in marks:
            starts[i] = ends[i] = ends[i - 1]


def _words(
    ids: list[int], tx: list[str], starts: list[int], ends: list[int], table: TokenTable
) -> tuple[list[str], list[int], list[int]]:
    """NeMo's `get_words_offsets` for a BPE tokenizer and the word delimiter " ": words' texts, first and last
    offsets (frames)."""
    n = len(ids)
    pc = [table.pieces[t] for t in ids]
    punct = [table.is_mark[t] for t in ids]
    starts_word = [table.starts_word[t] for t in ids]
    next_is_punct = _next_is_mark(tx, table.punctuation)
    w_text: list[str] = []
    w_start: list[int] = []
    w_end: list[int] = []
    built: list[str] = []
    first = 0
    for i in range(n):
        text = tx[i]
        if (starts_word[i] or (text == " " and not next_is_punct[i])) and not punct[i]:
            if built:
                w_text.append(table.word(built))
                w_start.append(starts[first])
                w_end.append(ends[i - 1])
            built = []
            if text != " ":
                built.append(pc[i])
                first = i
        elif punct[i] and not built and w_text:  # a mark after a finished word joins it
            w_end[-1] = ends[i]
            w = w_text[-1]
            w_text[-1] = (w[:-1] if w[-1] == " " else w) + text
        elif punct[i] and built:  # a mark joins the word being built, without the space piece before it
            if built[-1] in _PIECE_SPACES:
                built.pop()
            built.append(pc[i])
        else:
            if not built:
                first = i
            built.append(pc[i])
    if built:
        w_text.append(table.word(built))
        w_start.append(starts[first])
        w_end.append(ends[-1])
    if w_text:
        w_start[0] = starts[0]  # NeMo: the first word starts at the first token, whatever came before it
    return w_text, w_start, w_end


def _next_is_mark(tx: list[str], marks: frozenset[str]) -> list[bool]:
    """Per token: whether the first later token whose text is neither empty nor " " is a supported mark (NeMo's
    `next_non_delimeter_token ... in supported_punctuation`, found by one backward pass instead of a scan each)."""
    out = [False] * len(tx)
    following = False
    for i in range(len(tx) - 1, -1, -1):
        out[i] = following
        if tx[i] and tx[i] != " ":
            following = tx[i] in marks
    return out


def _segments(
    w_text: list[str], w_start: list[int], w_end: list[int], delims: tuple[str, ...]
) -> list[tuple[str, int, int]]:
    """NeMo's `get_segment_offsets` without a gap threshold: (text, first offset, last offset) per segment."""
    segments: list[tuple[str, int, int]] = []
    seg_words: list[str] = []
    seg_first = 0
    for i, word in enumerate(w_text):
        seg_words.append(word)
        if word and (word[-1] in delims or word in delims):
            segments.append((" ".join(seg_words), w_start[seg_first], w_end[i]))
            seg_words = []
            seg_first = i + 1
    if seg_words:
        segments.append((" ".join(seg_words), w_start[seg_first], w_end[-1]))
    return segments
