"""parakeet.core.timestamps gives exactly what NeMo's `compute_rnnt_timestamps(hyp, "all")` +
`process_timestamp_outputs` give: over generated hypotheses with a punctuated SentencePiece vocabulary (every branch
of NeMo's word and segment building: word starts, bare spaces, marks joining a built word or the word before,
segment ends), and on the real outputs of the project's models, with and without confidence."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nemo.collections.asr.parts.submodules.rnnt_decoding import AbstractRNNTDecoding
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

from inference import ParakeetEngine, build_engine, token_table
from parakeet.core.timestamps import HypothesisTimestamps, TokenTable, tdt_timestamps
from parakeet.engine.hypotheses import nemo_spans
from tests.support.build_test_models import train_tokenizer

from helpers import ENCODER_BACKENDS, backend_engine, cpu_settings

SENTENCES = [
    "Hello, world. How are you? I'm fine!",
    "It's 3.5 km away -- isn't it? Yes, it is.",
    "Wait... what?! No, no, no.",
    "Dr. Smith's cat, Tom, sat; then left.",
    "One, two, three. Four! Five? Six...",
    '"Quoted," she said. (Aside) done.',
]


@pytest.fixture(scope="module", params=ENCODER_BACKENDS)
def digits_engine(request: pytest.FixtureRequest, digits_engine: ParakeetEngine) -> ParakeetEngine:
    """Each test here on both encoder backends (torch, ONNX Runtime): the same NeMo comparisons hold on either."""
    engine: ParakeetEngine = backend_engine(request, digits_engine)
    return engine


@pytest.fixture(scope="module")
def punctuated_decoding(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Any:
    """NeMo's own RNNTBPEDecoding for a TDT model, with a SentencePiece BPE tokenizer whose vocabulary has
    punctuation (the test models' tokenizers have none), over the tiny model's decoder and joint (the timestamp
    code never calls them)."""
    from nemo.collections.asr.models import ASRModel
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding
    from nemo.collections.common.tokenizers import SentencePieceTokenizer
    from omegaconf import OmegaConf, open_dict

    out = tmp_path_factory.mktemp("punct_tok")
    train_tokenizer(SENTENCES * 20, out, vocab_size=96)
    tokenizer = SentencePieceTokenizer(str(out / "tokenizer.model"))
    tokenizer.tokenizer.vocab_size = tokenizer.vocab_size  # as NeMo's ASRBPEMixin attaches it (an int, not the method)
    model = ASRModel.restore_from(str(tiny_model_path), map_location="cpu")
    model.change_decoding_strategy(model.cfg.decoding, verbose=False)
    cfg: Any = OmegaConf.create(OmegaConf.to_container(model.decoding.cfg, resolve=True))
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.compute_timestamps = True
        cfg.rnnt_timestamp_type = "all"
        cfg.segment_seperators = [".", "!", "?"]
    decoding = RNNTBPEDecoding(cfg, decoder=model.decoder, joint=model.joint, tokenizer=tokenizer)
    assert {".", ",", "?", "!", "'"} <= decoding.supported_punctuation
    return decoding


@pytest.fixture(scope="module")
def punctuated_table(punctuated_decoding: Any) -> TokenTable:
    table = token_table(punctuated_decoding, 0.01, 8)
    assert table is not None
    return table


def nemo_timestamps(decoding: Any, ids: list[int], frames: list[int], durations: list[int]) -> HypothesisTimestamps:
    hyp = Hypothesis(
        score=0.0,
        y_sequence=torch.tensor(ids, dtype=torch.long),
        timestamp=torch.tensor(frames, dtype=torch.long),
        token_duration=torch.tensor(durations, dtype=torch.long),
    )
    timed = decoding.compute_rnnt_timestamps(copy.deepcopy(hyp), "all")
    process_timestamp_outputs([timed], 8, 0.01)
    return HypothesisTimestamps(nemo_spans(timed, "word"), nemo_spans(timed, "segment"), nemo_spans(timed, "char"))


def assert_same_as_nemo(
    decoding: Any, table: TokenTable, ids: list[int], frames: list[int], durations: list[int]
) -> None:
    """Our timestamps equal NeMo's for this hypothesis, or both raise IndexError (NeMo indexes an empty word's last
    character; so do we)."""
    try:
        expected = nemo_timestamps(decoding, ids, frames, durations)
    except IndexError:
        with pytest.raises(IndexError):
            tdt_timestamps(ids, frames, durations, table)
        return
    assert tdt_timestamps(ids, frames, durations, table) == expected


@st.composite
def hypotheses(draw: st.DrawFn, vocab: int, marks: list[int], spaces: list[int]) -> tuple[list[int], ...]:
    """Token ids biased towards punctuation and bare word-start pieces, with non-decreasing frames and TDT
    durations 0-4 (Parakeet's duration set)."""
    token = st.one_of(st.integers(0, vocab - 1), st.sampled_from(marks), st.sampled_from(spaces))
    ids = draw(st.lists(token, max_size=40))
    steps = draw(st.lists(st.integers(0, 4), min_size=len(ids), max_size=len(ids)))
    durations = draw(st.lists(st.integers(0, 4), min_size=len(ids), max_size=len(ids)))
    frames = list(np.cumsum(steps).tolist()) if ids else []
    return ids, frames, durations


def test_property_equal_to_nemo_on_generated_hypotheses(punctuated_decoding: Any, punctuated_table: TokenTable) -> None:
    vocab = len(punctuated_table.pieces)
    marks = [i for i, t in enumerate(punctuated_table.texts) if t in punctuated_table.punctuation]
    spaces = [i for i, p in enumerate(punctuated_table.pieces) if p.startswith("\u2581") and len(p) <= 2]
    assert len(marks) >= 5 and spaces

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(hypotheses(vocab, marks, spaces))
    def check(case: tuple[list[int], list[int], list[int]]) -> None:
        assert_same_as_nemo(punctuated_decoding, punctuated_table, *case)

    check()


class SyntheticDecoding:
    """NeMo's own `compute_rnnt_timestamps` (TDT offsets and refinement) over a generated vocabulary: pieces and
    texts that no trained tokenizer yields (bare spaces, "_", empty texts, marks spelled with a word-start mark),
    so that every branch of NeMo's word building is reached."""

    compute_rnnt_timestamps = AbstractRNNTDecoding.compute_rnnt_timestamps
    _compute_offsets = staticmethod(AbstractRNNTDecoding._compute_offsets_tdt)
    _refine_timestamps = staticmethod(AbstractRNNTDecoding._refine_timestamps_tdt)
    word_seperator = " "
    tokenizer_type = "bpe"
    segment_gap_threshold = None
    segment_seperators = [".", "!", "?"]

    def __init__(self, pieces: list[str], texts: list[str], punctuation: set[str]) -> None:
        self.pieces, self.texts, self.supported_punctuation = pieces, texts, punctuation
        self.blank_id = len(pieces)

    def decode_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]

    def decode_ids_to_str(self, ids: list[int]) -> str:
        return "".join(self.texts[i] for i in ids)

    def decode_tokens_to_str(self, pieces: list[str]) -> str:
        return "".join(pieces).replace("\u2581", " ").lstrip()  # a trailing space survives: NeMo strips one


PIECES = ["\u2581a", "a", "b", "\u2581", "_", " ", ".", ",", "?", "!", "\u2581.", "ab", "x"]
TEXTS = ["a", "b", " ", "", ".", ",", "?", "!", "ab", "\u2581a"]


@settings(max_examples=800, deadline=None, database=None)
@given(st.data())
def test_property_equal_to_nemo_over_generated_vocabularies(data: st.DataObject) -> None:
    vocab = data.draw(st.integers(2, 12))
    same = st.sampled_from([" ", ".", ",", "?", "a", "ab"]).map(lambda t: (t, t))  # piece == text: no word start
    token = st.one_of(st.tuples(st.sampled_from(PIECES), st.sampled_from(TEXTS)), same)
    pieces, texts = map(list, zip(*data.draw(st.lists(token, min_size=vocab, max_size=vocab)), strict=True))
    punctuation = data.draw(st.sets(st.sampled_from([".", ",", "?", "!"])))
    ids = data.draw(st.lists(st.integers(0, vocab), max_size=30))  # vocab itself is the blank
    frames = np.cumsum(data.draw(st.lists(st.integers(0, 3), min_size=len(ids), max_size=len(ids)))).tolist()
    durations = data.draw(st.lists(st.integers(0, 4), min_size=len(ids), max_size=len(ids)))
    decoding = SyntheticDecoding(pieces, texts, punctuation)
    table = TokenTable(
        pieces=pieces, texts=texts, punctuation=frozenset(punctuation), decode_pieces=decoding.decode_tokens_to_str,
        blank_id=vocab, segment_delimiters=(".", "!", "?"), window_stride_s=0.01, subsampling_factor=8,
    )  # fmt: skip
    assert_same_as_nemo(decoding, table, ids, frames, durations)


def test_equal_to_nemo_on_hand_picked_punctuation(punctuated_decoding: Any, punctuated_table: TokenTable) -> None:
    tok = punctuated_decoding.tokenizer
    for text in SENTENCES:
        ids = tok.text_to_ids(text)
        frames = [3 * i for i in range(len(ids))]
        durations = [(i % 3) + 1 for i in range(len(ids))]
        ours = tdt_timestamps(ids, frames, durations, punctuated_table)
        assert ours == nemo_timestamps(punctuated_decoding, ids, frames, durations)
        assert " ".join(w.text for w in ours.words) == tok.ids_to_text(ids)
        assert ours.segments and ours.segments[0].text.endswith((".", "!", "?")) == (text[-1] in ".!?")


def test_empty_and_mismatched_hypotheses(punctuated_table: TokenTable) -> None:
    assert tdt_timestamps([], [], [], punctuated_table) == HypothesisTimestamps((), (), ())
    blank = punctuated_table.blank_id
    assert tdt_timestamps([blank, blank], [0, 1], [1, 1], punctuated_table) == HypothesisTimestamps((), (), ())
    with pytest.raises(ValueError, match="2 token offsets for 3 non-blank tokens"):
        tdt_timestamps([5, 6, 7], [0, 1], [1, 1, 1], punctuated_table)


def _waveforms(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.3, 1.3, 3.0, 7.7)]


@pytest.mark.parametrize("confidence", [False, True])
def test_engine_outputs_equal_to_nemo_timestamps(
    digits_engine: ParakeetEngine, digit_utterances: list[Any], tiny_model_path: Path, confidence: bool
) -> None:
    """Real decoder outputs: the digits model on speech and the tiny random model on noise, as one batch each,
    with the engine's own table against NeMo's code on the same hypotheses."""
    tiny = build_engine(cpu_settings(tiny_model_path), torch.device("cpu"))
    cases = [(digits_engine, [u.waveform for u in digit_utterances[:8]] + _waveforms(1)), (tiny, _waveforms(2))]
    for engine, waves in cases:
        assert engine.timestamps_impl == "parakeet"
        flags = [True] * len(waves)
        ours = engine.transcribe(waves, flags, [confidence] * len(waves)).transcripts
        engine.timestamps_impl = "nemo"
        try:
            reference = engine.transcribe(waves, flags, [confidence] * len(waves)).transcripts
        finally:
            engine.timestamps_impl = "parakeet"
        assert ours == reference
        assert sum(len(t.words) for t in ours) >= len(waves)  # words were produced, not both empty
