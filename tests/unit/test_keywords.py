"""Key phrases (custom vocabulary) in the engine: the same text as NeMo's own `model.transcribe()` with the same
per-stream boosting configuration; boosting the spoken digits lowers the WER of noisy utterances the model gets
wrong while an absent phrase changes little; items without phrases are byte-identical to a batch without boosting;
the request-side limits (parakeet/core/keywords.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from bench.check_keywords_parity import nemo_boosted_texts
from inference import ParakeetEngine
from parakeet.core.errors import BadRequest
from parakeet.core.keywords import MAX_PHRASE_CHARS, MAX_PHRASES, KeyPhrases, parse_key_phrases
from tests.support import speech

from helpers import ENCODER_BACKENDS, backend_engine


@pytest.fixture(scope="module", params=ENCODER_BACKENDS)
def digits_engine(request: pytest.FixtureRequest, digits_engine: ParakeetEngine) -> ParakeetEngine:
    """Each test here on both encoder backends (torch, ONNX Runtime): the same NeMo comparisons hold on either."""
    engine: ParakeetEngine = backend_engine(request, digits_engine)
    return engine


def noisy(utterances: list[Any], level: float) -> list[np.ndarray]:
    out = []
    for i, u in enumerate(utterances):
        rng = np.random.default_rng(100 + i)
        out.append((u.waveform + level * rng.standard_normal(len(u.waveform))).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def hard_cases(digits_engine: ParakeetEngine) -> tuple[list[Any], list[np.ndarray]]:
    """Noisy digit utterances (voices the model never heard) that the digits model gets wrong without boosting."""
    utts = [speech.random_utterance(70_000 + i, voices=speech.HELD_OUT_VOICES) for i in range(40)]
    waves = noisy(utts, 0.1)
    texts = [t.text for t in digits_engine.transcribe(waves, [False] * len(waves)).transcripts]
    wrong = [i for i, (u, t) in enumerate(zip(utts, texts, strict=True)) if u.text != t]
    assert len(wrong) >= 6, f"only {len(wrong)} of 40 noisy utterances are misrecognised: make the noise louder"
    return [utts[i] for i in wrong], [waves[i] for i in wrong]


def test_keywords_text_equals_nemo_transcribe_with_the_same_boosting(
    digits_engine: ParakeetEngine, digits_model_path: Path, hard_cases: tuple[list[Any], list[np.ndarray]],
    tmp_path: Path,
) -> None:  # fmt: skip
    utts, waves = hard_cases[0][:6], hard_cases[1][:6]
    lists: list[KeyPhrases | None] = [
        KeyPhrases((utts[0].text,)), None, KeyPhrases(("three three", "nine"), 2.0), KeyPhrases((utts[3].text,), 0.5),
        None, KeyPhrases(tuple(u.text for u in utts)),
    ]  # fmt: skip
    ours = [t.text for t in digits_engine.transcribe(waves, [False] * 6, None, lists).transcripts]
    assert ours == nemo_boosted_texts(digits_model_path, waves, lists, tmp_path)


def test_keywords_boosting_the_spoken_digits_lowers_wer_and_an_absent_phrase_changes_little(
    digits_engine: ParakeetEngine, hard_cases: tuple[list[Any], list[np.ndarray]]
) -> None:
    utts, waves = hard_cases
    refs = [u.text for u in utts]
    n = len(waves)

    def wer(lists: list[KeyPhrases | None]) -> float:
        return float(
            jiwer.wer(refs, [t.text for t in digits_engine.transcribe(waves, [False] * n, None, lists).transcripts])
        )

    plain = wer([None] * n)
    spoken = wer([KeyPhrases((u.text,), 2.0) for u in utts])
    absent = wer([KeyPhrases(("zero zero zero zero zero zero",), 2.0)] * n)
    print(f"{n} misrecognised noisy utterances: WER {plain:.1%} plain, {spoken:.1%} boosting the spoken digits, "
          f"{absent:.1%} boosting an absent phrase")  # fmt: skip
    assert spoken <= 0.7 * plain  # 45% -> 27% when this was written
    assert abs(absent - plain) <= 0.25 * plain


def test_keywords_items_without_phrases_are_identical_to_a_batch_without_boosting(
    digits_engine: ParakeetEngine, digit_utterances: list[Any]
) -> None:
    waves = [u.waveform for u in digit_utterances[:6]]
    plain = digits_engine.transcribe(waves, [True] * 6, [True] * 6).transcripts
    lists = [KeyPhrases(("seven seven",), 3.0) if i % 2 else None for i in range(6)]
    mixed = digits_engine.transcribe(waves, [True] * 6, [True] * 6, lists).transcripts
    for i in range(0, 6, 2):
        assert mixed[i] == plain[i]  # text, words, segments, tokens and their confidences
    assert all(t.words and t.words[0].confidence is not None for t in mixed)  # boosted items keep both
    repeat = digits_engine.transcribe(waves, [True] * 6, [True] * 6, lists).transcripts
    assert repeat == mixed  # the compiled lists are reused, with the same result


def test_keywords_parse_limits_name_the_limit_and_the_value() -> None:
    assert parse_key_phrases([], None) is None
    kp = parse_key_phrases(["Anna Smith, ACME", " acme  corp ", "ACME"], 2.5)
    assert kp == KeyPhrases(("Anna Smith", "ACME", "acme corp"), 2.5)
    assert kp.cache_key == parse_key_phrases(["Anna Smith,ACME,acme corp"], 2.5).cache_key  # type: ignore[union-attr]
    assert kp.cache_key != KeyPhrases(("Anna Smith", "ACME", "acme corp"), 2.0).cache_key
    cases = [
        ((["a,,b"], None), "'keywords' holds an empty phrase (in 'a,,b')", "keywords"),
        ((["x" * (MAX_PHRASE_CHARS + 1)], None), f"101 characters; the limit is {MAX_PHRASE_CHARS}", "keywords"),
        (
            ([",".join(f"p{i}" for i in range(MAX_PHRASES + 1))], None),
            "has 1001 phrases; the limit is 1000",
            "keywords",
        ),
        ((["a"], 0.0), "keyword_weight must be in (0, 10], got 0", "keyword_weight"),
        ((["a"], 11.0), "keyword_weight must be in (0, 10], got 11", "keyword_weight"),
    ]
    for (values, weight), message, param in cases:
        with pytest.raises(BadRequest) as info:
            parse_key_phrases(values, weight)
        assert message in info.value.message and info.value.param == param


def test_keywords_stream_steps_mix_boosted_and_plain_streams(
    digits_engine: ParakeetEngine, hard_cases: tuple[list[Any], list[np.ndarray]]
) -> None:
    """Three streams step through their utterances together, the middle one boosted: the plain streams' tokens
    equal those of the same steps without any boosted stream, and the boosted stream's equal its steps alone."""
    from parakeet.core.engine import StepRequest

    waves = [w[:32000] for w in hard_cases[1][:3]]
    boost = KeyPhrases((hard_cases[0][1].text,), 2.0)

    def run_steps(keywords: list[KeyPhrases | None], waves: list[np.ndarray] = waves) -> list[tuple[int, ...]]:
        states: list[Any] = [None] * len(waves)
        tokens: list[tuple[int, ...]] = [()] * len(waves)
        frame = digits_engine.encoder_frame_samples
        for k in range(3):  # windows of 8 encoder frames, committing 4 after 2 of left context
            lo = max(0, k * 4 - 2) * frame
            reqs = [
                StepRequest(w[lo : (k * 4 + 8) * frame], min(2, k * 4), 4, states[i], tokens[i], keywords[i])
                for i, w in enumerate(waves)
            ]
            out = digits_engine.stream_step(reqs).results
            states, tokens = [r.state for r in out], [r.tokens for r in out]
        return tokens

    plain = run_steps([None, None, None])
    mixed = run_steps([None, boost, None])
    assert mixed[0] == plain[0] and mixed[2] == plain[2]
    assert mixed[1] == run_steps([boost], [waves[1]])[0]
