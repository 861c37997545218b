"""NeMo's TDT greedy decodings as the engine serves them: the model's own, and variants over the same decoder and
joint that keep confidence and/or boost key phrases; the compiled phrase lists; the tokenizer's spelling check."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

from parakeet.core.keywords import KeyPhrases

MAX_COMPILED_PHRASE_LISTS = 64  # boosting trees kept compiled per decoding (each a few MB on the device at most)

# NeMo's ConfidenceConfig for word and token confidence: `max_prob` at alpha 1 (the greedy token's probability p,
# normalised over the V token classes as (pV - 1) / (V - 1)), blank frames excluded, a word's confidence the
# minimum of its tokens' (NeMo's default aggregation). Source: nemo/collections/asr/parts/utils/
# asr_confidence_utils.py (ConfidenceConfig, the measure bank).
CONFIDENCE_CFG = {
    "preserve_frame_confidence": True, "preserve_token_confidence": True, "preserve_word_confidence": True,
    "exclude_blank": True, "aggregation": "min", "method_cfg": {"name": "max_prob", "alpha": 1.0},
}  # fmt: skip


def serving_decoding_cfg(model_decoding_cfg: Any, max_symbols_per_step: int) -> Any:
    """The model's decoding config for serving: batched greedy, at most `max_symbols_per_step` tokens per encoder
    frame, word/segment/char timestamps from the decoder's frame offsets (they never change the text)."""
    from omegaconf import OmegaConf, open_dict

    cfg: Any = OmegaConf.create(OmegaConf.to_container(model_decoding_cfg, resolve=True))
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.greedy = cfg.get("greedy") or {}
        cfg.greedy.max_symbols = max_symbols_per_step
        cfg.compute_timestamps = True
        cfg.rnnt_timestamp_type = "all"
        cfg.segment_seperators = [".", "!", "?"]
    return cfg


class Decodings:
    """The decoding objects of one model on one device. Not thread-safe (the GPU thread's), but `unspellable`.

    Args:
        model: the NeMo TDT/RNNT model.
        cfg: its serving decoding config (`serving_decoding_cfg`).
        use_triton: compile boosting trees for Triton (CUDA).
    """

    def __init__(self, model: Any, cfg: Any, use_triton: bool) -> None:
        self.model, self.cfg, self.use_triton = model, cfg, use_triton
        self._variants: dict[tuple[bool, bool], Any] = {}  # (confidence, boosting) -> NeMo decoding
        self._boosted: dict[int, OrderedDict[str, Any]] = {}  # per multi-model: cache key -> its request config
        self._spells: dict[str, bool] = {}  # character -> whether the tokenizer spells it

    def configure(self, cuda_graphs: bool) -> None:
        """Rebuild the model's decoding with or without NeMo's CUDA-graph decoder (`greedy.use_cuda_graph_decoder`);
        the variants are rebuilt on their next use. Call it between batches."""
        from omegaconf import OmegaConf, open_dict

        cfg: Any = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        with open_dict(cfg):
            cfg.greedy.use_cuda_graph_decoder = cuda_graphs
        self.model.change_decoding_strategy(cfg, verbose=False)
        self._variants, self._boosted = {}, {}

    def for_batch(self, confidence: bool, boosting: bool) -> Any:
        """The decoding object for a batch: the model's own, or a second one over the same decoder and joint (no
        weights copied), built on first use, that keeps confidence (`CONFIDENCE_CFG`) and/or boosts key phrases
        (`greedy.enable_per_stream_biasing`); their greedy path and text are the default's
        (tests/unit/test_inference.py, tests/unit/test_keywords.py). Boosting's multi-model costs a batch ~6% even
        with no phrase on the CPU (BENCHMARKS.md "Custom vocabulary"), so batches without phrases keep the
        model's own decoding."""
        if not confidence and not boosting:
            return self.model.decoding
        key = (confidence, boosting)
        if key not in self._variants:
            from omegaconf import OmegaConf, open_dict

            cfg: Any = OmegaConf.create(OmegaConf.to_container(self.model.decoding.cfg, resolve=True))
            with open_dict(cfg):
                if confidence:
                    cfg.confidence_cfg = CONFIDENCE_CFG
                cfg.greedy.enable_per_stream_biasing = boosting
            kind = type(self.model.decoding)
            m = self.model
            self._variants[key] = kind(cfg, decoder=m.decoder, joint=m.joint, tokenizer=m.tokenizer)
        return self._variants[key]

    def partial_hypotheses(self, decoding: Any, keywords: Sequence[KeyPhrases | None]) -> list[Any]:
        """NeMo's partial hypotheses that carry each item's phrase boosting (None for items without phrases): an
        empty hypothesis holding the item's compiled `BiasingRequestItemConfig` (`compiled`), as
        `EncDecRNNTModel._transcribe_on_begin` sets them up (nemo/collections/asr/models/rnnt_models.py)."""
        return [
            None if kp is None else BoostedHypothesis(
                score=0.0, y_sequence=None, timestamp=None, biasing_cfg=self.compiled(decoding, kp)
            )
            for kp in keywords
        ]  # fmt: skip

    def compiled(self, decoding: Any, kp: KeyPhrases) -> Any:
        """The `BiasingRequestItemConfig` of `kp`, its boosting tree in `decoding`'s biasing multi-model (its
        `multi_model_id` is the tree's id there): compiled on first use, kept for the last
        `MAX_COMPILED_PHRASE_LISTS` distinct lists per decoding (least recently used dropped)."""
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import BoostingTreeModelConfig

        multi = decoding.decoding.decoding_computer.biasing_multi_model
        compiled = self._boosted.setdefault(id(multi), OrderedDict())
        cfg = compiled.get(kp.cache_key)
        if cfg is None:
            tree = BoostingTreeModelConfig(key_phrases_list=list(kp.phrases), use_triton=self.use_triton)
            cfg = BiasingRequestItemConfig(boosting_model_cfg=tree, boosting_model_alpha=kp.weight)
            cfg.add_to_multi_model(tokenizer=self.model.tokenizer, biasing_multi_model=multi)
            compiled[kp.cache_key] = cfg
            while len(compiled) > MAX_COMPILED_PHRASE_LISTS:
                _, old = compiled.popitem(last=False)
                old.remove_from_multi_model(biasing_multi_model=multi)
        compiled.move_to_end(kp.cache_key)
        return cfg

    def unspellable(self, text: str) -> str:
        """The distinct characters of `text` that the model's tokenizer maps to its unknown token (a phrase holding
        one cannot be boosted as written), in first-seen order; "" when it spells them all. Whitespace always spells.

        Thread-safe: only the tokenizer's encoder runs (SentencePiece keeps no state between encodings), so the
        server calls it on its event loop while the GPU thread decodes. Each character is encoded once."""
        tokenizer = self.model.tokenizer
        unk = getattr(tokenizer, "unk_id", None)
        if not isinstance(unk, int) or unk < 0:
            return ""
        missing = []
        for char in dict.fromkeys(text):
            if char.isspace():
                continue
            spells = self._spells.get(char)
            if spells is None:
                spells = self._spells[char] = unk not in tokenizer.text_to_ids(char)
            if not spells:
                missing.append(char)
        return "".join(missing)


class BoostedHypothesis(Hypothesis):  # type: ignore[misc]
    """An empty partial hypothesis carrying a `BiasingRequestItemConfig` that becomes the decoded continuation when
    NeMo merges it: its sequence fields are None, so `merge_` takes the continuation's own, and `token_duration`,
    which NeMo 3.0.0's `Hypothesis.merge_` does not merge (so boosting with timestamps through
    `Hypothesis.empty_with_biasing_cfg` loses the TDT durations and its timestamp code raises), is taken over too."""

    def merge_(self, other: Any) -> Any:
        super().merge_(other)
        self.token_duration = other.token_duration
        return self
