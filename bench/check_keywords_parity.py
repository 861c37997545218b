"""Check: the engine's boosted text equals NeMo's own `model.transcribe()` with the same per-stream boosting, on any
model (the digits model in the tests; the full-size architecture with random weights here, on demand).

`--items` clips of `--clip-s` seconds (espeak-ng digits with pauses) get mixed phrase lists in one batch: none,
another item's unboosted words, the item's own and another's, fixed phrases (`--extra`), at weights 0.5 to 5. Our engine
transcribes the batch once; NeMo transcribes the same samples from files with `partial_hypothesis` carrying each
item's `BiasingRequestItemConfig` (NeMo's word-boosting guide,
https://docs.nvidia.com/nemo-framework/user-guide/latest/nemotoolkit/asr/asr_customization/word_boosting.html).
Prints one line per item and how many lists changed the text; exit 1 on any difference.

    .venv/bin/python -m bench check_keywords_parity --model models/digits_tdt.nemo
    .venv/bin/python -m tests.support.build_test_models fullsize --out /tmp/full.nemo \\
        --tokenizer-dir ../shared/tokenizers/bpe_1024_random
    .venv/bin/python -m bench check_keywords_parity --model /tmp/full.nemo --items 8 --clip-s 6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from parakeet.core.keywords import KeyPhrases

ROOT = Path(__file__).resolve().parent.parent


def nemo_boosted_texts(
    model_path: Path, waves: list[np.ndarray], lists: list[KeyPhrases | None], tmp: Path
) -> list[str]:
    """NeMo's own transcribe() on file paths with per-utterance boosting: `partial_hypothesis` carrying each
    utterance's BiasingRequestItemConfig, the decoding with `greedy.enable_per_stream_biasing` (NeMo's word-boosting
    guide, docs/source/asr/asr_customization/word_boosting.rst in NVIDIA-NeMo)."""
    import soundfile as sf
    import torch
    from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig
    from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import BoostingTreeModelConfig
    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
    from omegaconf import OmegaConf, open_dict

    from inference import load_asr_model

    model = load_asr_model(str(model_path), torch.device("cpu"))
    cfg: Any = OmegaConf.create(OmegaConf.to_container(model.cfg.decoding, resolve=True))
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.greedy.enable_per_stream_biasing = True
    model.change_decoding_strategy(cfg, verbose=False)
    model.eval()
    paths = []
    for i, w in enumerate(waves):
        sf.write(tmp / f"b{i}.wav", w, 16000, subtype="FLOAT")
        paths.append(str(tmp / f"b{i}.wav"))
    partial = [
        None if kp is None else Hypothesis.empty_with_biasing_cfg(BiasingRequestItemConfig(
            boosting_model_cfg=BoostingTreeModelConfig(key_phrases_list=list(kp.phrases), use_triton=False),
            boosting_model_alpha=kp.weight,
        ))
        for kp in lists
    ]  # fmt: skip
    out = model.transcribe(paths, batch_size=len(paths), verbose=False, partial_hypothesis=partial)
    return [h.text if hasattr(h, "text") else str(h) for h in out]


def phrase_lists(plain: list[str], extra: tuple[str, ...]) -> list[KeyPhrases | None]:
    """Mixed lists for a batch whose unboosted texts are `plain`, by item number mod 4: none; the next item's words
    at weight 2; the item's own and the next item's words at 0.5; `extra` at weight 5 (strong enough to change
    what a random-weight model emits)."""
    lists: list[KeyPhrases | None] = []
    for i, text in enumerate(plain):
        words = text.split() or ["zero"]
        other = plain[(i + 1) % len(plain)].split() or ["one"]
        if i % 4 == 0:
            lists.append(None)
        elif i % 4 == 1:
            lists.append(KeyPhrases((" ".join(other[:3]),), 2.0))
        elif i % 4 == 2:
            lists.append(KeyPhrases(tuple(dict.fromkeys([" ".join(words[1:3]) or words[0], *other[:2]])), 0.5))
        else:
            lists.append(KeyPhrases(extra, 5.0))
    return lists


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "digits_tdt.nemo")
    p.add_argument("--items", type=int, default=6)
    p.add_argument("--clip-s", type=float, default=5.0)
    p.add_argument("--extra", default="seven seven seven,zero one", help="comma list: the phrases of every 4th item")
    args = p.parse_args()

    import torch

    from bench.engine import clips
    from inference import build_engine
    from parakeet.core.settings import Settings

    engine = build_engine(Settings(model=str(args.model), device="cpu", precision="fp32"), torch.device("cpu"))
    waves = clips(args.items, args.clip_s, 0)
    flags = [False] * len(waves)
    plain = [t.text for t in engine.transcribe(waves, flags).transcripts]
    extra = tuple(x for x in (e.strip() for e in args.extra.split(",")) if x and not engine.unspellable(x))
    lists = phrase_lists(plain, extra or ("zero",))
    ours = [t.text for t in engine.transcribe(waves, flags, None, lists).transcripts]
    with tempfile.TemporaryDirectory() as tmp:
        theirs = nemo_boosted_texts(args.model, waves, lists, Path(tmp))
    same = [a == b for a, b in zip(ours, theirs, strict=True)]
    for i, (kp, a, b) in enumerate(zip(lists, ours, theirs, strict=True)):
        phrases = "none" if kp is None else f"{len(kp.phrases)} phrase(s) at {kp.weight:g}"
        print(f"item {i}: {phrases:22} {'same' if a == b else 'DIFFERENT'}  ours={a[:50]!r}  nemo={b[:50]!r}")
    changed = sum(kp is not None and a != b for kp, a, b in zip(lists, ours, plain, strict=True))
    print(f"{sum(same)}/{len(same)} items equal NeMo's transcribe(); boosting changed {changed} item(s)' text")
    return 0 if all(same) else 1


if __name__ == "__main__":
    raise SystemExit(main())
