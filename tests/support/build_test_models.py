"""Build the small NeMo TDT models that the tests use, with no download.

`tiny`: a random 2-layer FastConformer-TDT (~0.3 M parameters) built from a config in well under a second;
it exercises the real preprocessor, encoder and TDT decoder but its text is noise.
`digits`: a 4-layer TDT (~1.9 M parameters) trained on CPU on espeak-ng speech of random digit sequences,
so that it really transcribes "three seven one". Recipe and numbers: docs/nemo.md.
`fullsize`: Parakeet-TDT-0.6B-v3's full architecture (the model's config YAML given as --arch, 627 M
parameters, 2.5 GB .nemo) with random weights and a random 8192-piece tokenizer, for speed and memory
measurements only: its text is noise. The encoder's cost does not depend on the weights; the decoder's
does (it runs once per emitted token), so the blank logit is calibrated to a speech-like emission rate.
`diarizer`: a two-speaker Sortformer (3 + 3 layers, d_model 96, ~1 M parameters) trained on CPU (~20 minutes) on
synthetic two-voice espeak-ng conversations; on voices it never heard its DER is 0.2% (tests/unit/test_diarization.py).
`tiny_diarizer`: a random tiny Sortformer diarizer (NeMo's `SortformerEncLabelModel`, ~0.4 M parameters), for the
diarizer's plumbing and its equality with NeMo's own `diarize()`; it tells no speakers apart (its last layer is
calibrated so that each speaker is on and off in runs).
All are seeded; the same command gives the same model on the same library versions.

Usage:
    python3 -m tests.support.build_test_models tiny --out models/tiny_tdt.nemo
    python3 -m tests.support.build_test_models digits --out models/digits_tdt.nemo [--steps 1800]
    python3 -m tests.support.build_test_models tiny_diarizer --out models/tiny_sortformer.nemo
    python3 -m tests.support.build_test_models diarizer --out models/two_speaker_sortformer.nemo --steps 1600 \
        --utterances 1000  (conversations)
    python3 -m tests.support.build_test_models fullsize --out models/parakeet_arch_random.nemo \
        --arch parakeet_tdt_0.6b_v3_arch.yaml --tokenizer-dir tokenizers/bpe_8192_random  (an 8192-piece BPE)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tests.support import speech

log = logging.getLogger("build_test_models")


def train_tokenizer(lines: list[str], out_dir: Path, vocab_size: int) -> Path:
    """Train a SentencePiece BPE tokenizer on `lines`; writes tokenizer.model/.vocab and vocab.txt."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    text_path = out_dir / "text.txt"
    text_path.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text_path),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    text_path.unlink()
    pieces = [line.split("\t")[0] for line in (out_dir / "tokenizer.vocab").read_text().splitlines()]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")
    return out_dir


def tdt_config(
    tokenizer_dir: Path,
    *,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_mels: int,
    pred_hidden: int,
    joint_hidden: int,
) -> Any:
    """An EncDecRNNTBPEModel config with Parakeet-TDT's structure at a small size.

    Mirrors Parakeet-TDT-0.6B-v3's architecture (dw_striding 8x subsampling, rel_pos attention,
    no biases, TDT durations [0..4]) with fewer and narrower layers.
    """
    from omegaconf import OmegaConf

    durations = [0, 1, 2, 3, 4]
    cfg = {
        "sample_rate": speech.SAMPLE_RATE_HZ,
        "compute_eval_loss": False,
        "log_prediction": False,
        "rnnt_reduction": "mean_volume",
        "model_defaults": {
            "enc_hidden": d_model,
            "pred_hidden": pred_hidden,
            "joint_hidden": joint_hidden,
            "tdt_durations": durations,
            "num_tdt_durations": len(durations),
        },
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "validation_ds": {
            "manifest_filepath": None,
            "sample_rate": speech.SAMPLE_RATE_HZ,
            "batch_size": 8,
            "shuffle": False,
            "use_start_end_token": False,
        },
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": speech.SAMPLE_RATE_HZ,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": n_mels,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-05,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 1,
            "time_masks": 2,
            "freq_width": 8,
            "time_width": 0.05,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": n_mels,
            "feat_out": -1,
            "n_layers": n_layers,
            "d_model": d_model,
            "use_bias": False,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": d_model,
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": n_heads,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": False,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": pred_hidden, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.1},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "fused_batch_size": 4,
            "jointnet": {"joint_hidden": joint_hidden, "activation": "relu", "dropout": 0.1},
            "num_extra_outputs": len(durations),
        },
        "decoding": {
            "strategy": "greedy_batch",
            "model_type": "tdt",
            "durations": durations,
            "greedy": {"max_symbols": 10},
        },
        "loss": {
            "loss_name": "tdt",
            "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": durations, "sigma": 0.02},
        },
    }
    return OmegaConf.create(cfg)


def build_model(cfg: Any) -> Any:
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    return EncDecRNNTBPEModel(cfg=cfg)


def save_model(model: Any, out: Path) -> None:
    """Switch `model` to inference mode and write it as a .nemo file at `out` (folders made)."""
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(out))


def optimizer_step(optim: Any, model: Any, loss: Any, bar: Any) -> None:
    """One training step from `loss`: gradients clipped at norm 1, the progress bar advanced with the loss."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    import torch

    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()
    bar.update(1)
    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def build_tiny(out: Path, seed: int) -> None:
    """Random tiny TDT (2 layers, d_model 64, 128 mels as in Parakeet): real modules, random weights."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(seed)
        lines = [speech.random_digits(rng) for _ in range(200)] + [
            "the quick brown fox jumps over the lazy dog",
            "hello world this is a tiny test model",
        ]
        tok = train_tokenizer(lines, Path(tmp) / "tok", vocab_size=48)
        cfg = tdt_config(tok, n_layers=2, d_model=64, n_heads=2, n_mels=128, pred_hidden=64, joint_hidden=64)
        model = build_model(cfg)
        save_model(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny TDT: %d parameters -> %s (%.1f MB)", n_params, out, out.stat().st_size / 1e6)


# NVIDIA's streaming Sortformer v2 (streaming_sortformer_diarizer_4spk-v2.yaml): its speaker cache and FIFO.
STREAMING_SORTFORMER = {
    "spkcache_len": 188, "fifo_len": 0, "chunk_len": 188, "spkcache_update_period": 1, "chunk_left_context": 1,
    "chunk_right_context": 1, "spkcache_sil_frames_per_spk": 3, "scores_add_rnd": 0, "pred_score_threshold": 0.25,
    "max_index": 99999, "scores_boost_latest": 0.05, "sil_threshold": 0.2, "strong_boost_rate": 0.75,
    "weak_boost_rate": 1.5, "min_pos_scores_rate": 0.5, "causal_attn_rate": 0.5, "causal_attn_rc": 7,
}  # fmt: skip


def sortformer_config(
    n_layers: int = 2, d_model: int = 64, n_mels: int = 80, max_speakers: int = 4, *, tf_layers: int | None = None,
    tf_d_model: int | None = None, streaming: bool = False,
) -> Any:  # fmt: skip
    """A Sortformer diarizer config with the modules of NVIDIA's `streaming_sortformer_diarizer_4spk-v2.yaml` (NeMo
    examples/speaker_tasks/diarization/conf/neural_diarizer/: mel preprocessor, FastConformer encoder with 8x
    dw_striding, Transformer encoder, Sortformer modules, BCE loss with arrival-time-sort and permutation-invariant
    targets). The defaults are small and offline; `full_size_sortformer_config()` is the v2 model's own sizes."""
    from omegaconf import OmegaConf

    tf_d = tf_d_model or d_model
    modules = {"_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
               "num_spks": max_speakers, "dropout_rate": 0.1, "fc_d_model": d_model, "tf_d_model": tf_d,
               **(STREAMING_SORTFORMER if streaming else {})}  # fmt: skip
    return OmegaConf.create({
        "sample_rate": 16000, "pil_weight": 0.5, "ats_weight": 0.5, "max_num_of_spks": max_speakers,
        "streaming_mode": streaming, "model_defaults": {"fc_d_model": d_model, "tf_d_model": tf_d},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "normalize": "per_feature", "window_size": 0.025, "sample_rate": 16000,
                         "window_stride": 0.01, "window": "hann", "features": n_mels, "n_fft": 512,
                         "frame_splicing": 1, "dither": 0.0},
        "sortformer_modules": modules,
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": n_mels, "feat_out": -1,
                    "n_layers": n_layers, "d_model": d_model, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": min(d_model, 256), "causal_downsampling": False,
                    "ff_expansion_factor": 4,
                    "self_attention_model": "rel_pos", "n_heads": 8 if d_model >= 256 else 4,
                    "att_context_size": [-1, -1],
                    "att_context_style": "regular", "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
                    "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "conv_context_size": None,
                    "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1},
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": tf_layers or n_layers, "hidden_size": tf_d, "inner_size": 4 * tf_d,
            "num_attention_heads": 4 if tf_d < 128 else 8,
            "attn_score_dropout": 0.1, "attn_layer_dropout": 0.1, "ffn_dropout": 0.1, "hidden_act": "relu",
            "pre_ln": False, "pre_ln_final_layer_norm": True},
        "loss": {"_target_": "nemo.collections.asr.losses.bce_loss.BCELoss", "weight": None, "reduction": "mean"},
    })  # fmt: skip


def full_size_sortformer_config() -> Any:
    """NVIDIA's streaming Sortformer v2 sizes (17 FastConformer layers of 512, 18 Transformer layers of 192, 128 mels;
    the yaml named in `sortformer_config`): for speed and memory measurements with random weights."""
    return sortformer_config(17, 512, 128, tf_layers=18, tf_d_model=192, streaming=True)


def build_tiny_diarizer(out: Path, seed: int) -> None:
    """Random tiny Sortformer (2 + 2 layers, d_model 64): NeMo's real modules with random weights, for the
    diarizer's plumbing and its equality with NeMo's own `diarize()`; it tells no speakers apart. Its last layer is
    calibrated on speech so that each speaker is active about half the time, in runs."""
    import torch
    from nemo.collections.asr.models import SortformerEncLabelModel

    torch.manual_seed(seed)
    model = SortformerEncLabelModel(sortformer_config())
    model.eval()
    # Random weights give each speaker a near-constant probability: calibrate the last layer on speech so that
    # each speaker's logit has median 0 and spread 3 (on and off in runs), so the outputs have segments and gaps.
    head = model.sortformer_modules.single_hidden_to_spks
    seen: list[Any] = []
    hook = head.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    speech_ = torch.from_numpy(calibration_speech(seed))[None]
    with torch.no_grad():
        model.forward(audio_signal=speech_, audio_signal_length=torch.tensor([speech_.shape[1]]))
        hook.remove()
        logits = seen[0][0]  # [T, S]
        scale = 3.0 / logits.std(0).clamp(min=1e-6)
        head.weight.mul_(scale[:, None])
        head.bias.copy_((head.bias - logits.median(0).values) * scale)
    save_model(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny Sortformer (random): %d parameters -> %s (%.1f MB)", n_params, out, out.stat().st_size / 1e6)


def two_voice_conversation(seed: int, voices: tuple[str, ...], max_overlap_s: float = 0.3) -> Any:
    """A two-speaker `speech.conversation` of one male and one female voice of `voices` (espeak-ng variants `+f*`
    are female), in a seeded order: the pitch apart, which a tiny model trained for minutes on a CPU can tell."""
    rng = random.Random(seed)
    male = [v for v in voices if "+f" not in v]
    female = [v for v in voices if "+f" in v]
    pair = [rng.choice(male), rng.choice(female)]
    rng.shuffle(pair)
    return speech.conversation(seed, 2, tuple(pair), max_overlap_s)


def speaker_targets(turns: Any, frames: int, speakers: int, frame_s: float = 0.08) -> Any:
    """Frame targets [frames, speakers] (1 where a speaker talks) from a conversation's turns, 80 ms frames."""
    import numpy as np

    y = np.zeros((frames, speakers), np.float32)
    for k, start, end, _ in turns:
        y[int(start / frame_s) : int(end / frame_s) + 1, k] = 1
    return y


def build_diarizer(out: Path, seed: int, steps: int, n_conversations: int) -> None:
    """Train a tiny two-speaker Sortformer (3 + 3 layers, d_model 96, 80 mels) on CPU on synthetic two-voice
    conversations (`two_voice_conversation`, training voices), with Sortformer's loss: binary cross-entropy against
    the arrival-time-sorted and the permutation-invariant targets, half each (NeMo's `get_ats_targets`,
    `get_pil_targets`; the v2 yaml's `ats_weight`/`pil_weight`). AdamW, 200 warm-up steps, the rate cut to 0.3 for
    the last quarter."""
    import torch
    from nemo.collections.asr.models import SortformerEncLabelModel
    from nemo.collections.asr.parts.utils.asr_multispeaker_utils import get_ats_targets, get_pil_targets
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = SortformerEncLabelModel(sortformer_config(3, 96, 80, max_speakers=2))
    talks = [two_voice_conversation(seed * 1_000_003 + i, speech.TRAIN_VOICES) for i in range(n_conversations)]
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=1e-3)
    rng = random.Random(seed)
    model.train()
    bar = tqdm(total=steps, desc="training", unit="step", mininterval=2.0)
    for step in range(steps):
        batch = rng.sample(talks, 8)
        lengths = torch.tensor([len(t.waveform) for t in batch])
        x = torch.zeros(len(batch), int(lengths.max()))
        for i, t in enumerate(batch):
            x[i, : len(t.waveform)] = torch.from_numpy(t.waveform)
        preds = model.forward(audio_signal=x, audio_signal_length=lengths)
        frames = preds.shape[1]
        y = torch.stack([torch.from_numpy(speaker_targets(t.turns, frames, 2)) for t in batch])
        target_lens = torch.clamp(lengths // 1280 + 1, max=frames)
        ats = get_ats_targets(y.clone(), preds, speaker_permutations=model.speaker_permutations)
        pil = get_pil_targets(y.clone(), preds, speaker_permutations=model.speaker_permutations)
        loss = 0.5 * model.loss(probs=preds, labels=ats, target_lens=target_lens) + 0.5 * model.loss(
            probs=preds, labels=pil, target_lens=target_lens
        )
        for group in optim.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 200) * (0.3 if step > 0.75 * steps else 1.0)
        optimizer_step(optim, model, loss, bar)
    bar.close()
    save_model(model, out)
    log.info("two-speaker Sortformer: %d steps -> %s (%.1f MB)", steps, out, out.stat().st_size / 1e6)


def calibration_speech(seed: int) -> Any:
    """The speech `calibrate_emission_rate` decodes: five seeded 5-digit utterances (espeak-ng en-us, 150 wpm),
    float32 16 kHz [T]; bench/gpu.py records it for a GPU machine without espeak-ng."""
    import numpy as np

    rng = random.Random(seed)
    return np.concatenate([speech.speak(speech.random_digits(rng, 5, 5), "en-us", 150) for _ in range(5)])


def calibrate_emission_rate(model: Any, tokens_per_s: float, seed: int) -> float:
    """Shift the joint's blank logit so that greedy TDT decoding of speech emits ~`tokens_per_s` tokens.

    Random weights emit a token at nearly every step (10 per encoder frame with max_symbols 10), which makes
    decoding ~5x the encoder's cost on CPU; the real model emits ~3-4 BPE tokens per second of English speech
    (2.5 words/s x ~1.3 tokens/word). Only the bias of the blank output moves; the architecture, parameter
    count and the encoder's cost are untouched. Returns the bias shift.
    """
    import torch

    speech_s = calibration_speech(seed)
    x = torch.from_numpy(speech_s)[None]
    x_len = torch.tensor([x.shape[1]])
    duration_s = x.shape[1] / speech.SAMPLE_RATE_HZ
    bias = model.joint.joint_net[-1].bias
    blank = model.joint.num_classes_with_blank - 1
    original = float(bias[blank].detach())
    with torch.inference_mode():
        feats, feat_lens = model.preprocessor(input_signal=x, length=x_len)
        enc, enc_lens = model.encoder(audio_signal=feats, length=feat_lens)

        def tokens_at(shift: float) -> int:
            bias[blank] = original + shift
            hyp = model.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=enc, encoded_lengths=enc_lens, return_hypotheses=True
            )[0]
            return len(hyp.y_sequence)

        target = tokens_per_s * duration_s
        lo, hi = 0.0, 64.0
        for _ in range(14):  # bisection on the shift: more shift, fewer tokens
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if tokens_at(mid) > target else (lo, mid)
        shift = (lo + hi) / 2
        emitted = tokens_at(shift)
    log.info(
        "blank bias +%.3f: %d tokens for %.1f s of speech (%.2f/s)", shift, emitted, duration_s, emitted / duration_s
    )
    return shift


def build_fullsize(out: Path, seed: int, arch: Path, tokenizer_dir: Path, tokens_per_s: float) -> None:
    """Full-size Parakeet-TDT architecture with random weights (see module docstring)."""
    import torch
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    cfg = OmegaConf.load(arch).model
    cfg.tokenizer.dir = str(tokenizer_dir.resolve())
    model = build_model(cfg)
    model.eval()
    if tokens_per_s > 0:
        calibrate_emission_rate(model, tokens_per_s, seed)
    save_model(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("full-size TDT (random): %d parameters -> %s (%.2f GB)", n_params, out, out.stat().st_size / 1e9)


def _synth(seed: int) -> tuple[str, Any]:
    utt = speech.random_utterance(seed)
    return utt.text, utt.waveform


def synthesize_corpus(n: int, seed: int) -> list[tuple[str, Any]]:
    """`n` seeded digit utterances (text, float32 16 kHz waveform), synthesized on all cores."""
    from tqdm import tqdm

    seeds = [seed * 1_000_003 + i for i in range(n)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(tqdm(pool.map(_synth, seeds, chunksize=32), total=n, desc="espeak-ng", unit="utt"))


def augment_with_silence(corpus: list[tuple[str, Any]], seed: int) -> list[tuple[str, Any]]:
    """Make the model robust to pauses, as real recordings and long files have them (espeak-ng's own output
    has almost no silence; without this the model's WER on digits padded by 0.75 s of silence was 20%).
    Half the examples stay as they are; a quarter get 0-0.8 s of silence before and after; a quarter are two
    utterances joined by a 0.1-1.0 s pause, with the same padding. Seeded."""
    import numpy as np

    rng = random.Random(seed + 17)

    def silence(lo: float, hi: float) -> Any:
        return np.zeros(int(rng.uniform(lo, hi) * speech.SAMPLE_RATE_HZ), dtype=np.float32)

    out = []
    for i, (text, wave) in enumerate(corpus):
        kind = i % 4
        if kind in (0, 1):
            out.append((text, wave))
        elif kind == 2:
            out.append((text, np.concatenate([silence(0, 0.8), wave, silence(0, 0.8)])))
        else:
            other_text, other = corpus[rng.randrange(len(corpus))]
            joined = [silence(0, 0.8), wave, silence(0.1, 1.0), other, silence(0, 0.8)]
            out.append((f"{text} {other_text}", np.concatenate(joined)))
    return out


def build_digits(out: Path, seed: int, steps: int, n_utts: int) -> None:
    """Train the digits TDT on CPU for `steps` optimizer steps of batch 32 (docs/nemo.md recipe)."""
    import numpy as np
    import torch
    from tqdm import tqdm
    from transformers.loss.loss_tdt import tdt_loss

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    corpus = augment_with_silence(synthesize_corpus(n_utts, seed), seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer([t for t, _ in corpus], Path(tmp) / "tok", vocab_size=32)
        cfg = tdt_config(tok, n_layers=4, d_model=128, n_heads=4, n_mels=80, pred_hidden=128, joint_hidden=128)
        model = build_model(cfg)
        tokenizer = model.tokenizer
        vocab_size = tokenizer.vocab_size
        blank_id = vocab_size
        durations = list(cfg.model_defaults.tdt_durations)

        # Length-bucketed batches of 32: sort by length, cut, shuffle the batches each epoch.
        order = sorted(range(len(corpus)), key=lambda i: len(corpus[i][1]))
        batches = [order[i : i + 32] for i in range(0, len(order), 32)]
        optim = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=1e-3)
        warmup_steps = 100
        rng = random.Random(seed)
        model.train()
        step = 0
        bar = tqdm(total=steps, desc="training", unit="step", mininterval=2.0)
        while step < steps:
            rng.shuffle(batches)
            for idx in batches:
                if step >= steps:
                    break
                # Linear warm-up, then cosine decay to zero at `steps` (docs/nemo.md recipe).
                if step < warmup_steps:
                    lr_scale = (step + 1) / warmup_steps
                else:
                    lr_scale = 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))
                for group in optim.param_groups:
                    group["lr"] = 3e-3 * lr_scale
                waves = [corpus[i][1] for i in idx]
                texts = [tokenizer.text_to_ids(corpus[i][0]) for i in idx]
                x = torch.zeros(len(waves), max(len(w) for w in waves))
                for j, w in enumerate(waves):
                    x[j, : len(w)] = torch.from_numpy(w)
                x_lens = torch.tensor([len(w) for w in waves])
                y = torch.full((len(texts), max(len(t) for t in texts)), blank_id, dtype=torch.long)
                for j, t in enumerate(texts):
                    y[j, : len(t)] = torch.tensor(t)
                y_lens = torch.tensor([len(t) for t in texts])

                feats, feat_lens = model.preprocessor(input_signal=x, length=x_lens)  # [B, n_mels, T_f]
                feats = model.spec_augmentation(input_spec=feats, length=feat_lens)
                enc, enc_lens = model.encoder(audio_signal=feats, length=feat_lens)  # [B, D, T_enc]
                dec, _, _ = model.decoder(targets=y, target_length=y_lens)  # [B, H, U+1]
                joint = model.joint(encoder_outputs=enc, decoder_outputs=dec)  # [B, T_enc, U+1, V+1+5]
                loss = tdt_loss(
                    token_logits=joint[..., : vocab_size + 1],
                    duration_logits=joint[..., vocab_size + 1 :],
                    targets=y,
                    logit_lengths=enc_lens,
                    target_lengths=y_lens,
                    blank_token_id=blank_id,
                    durations=durations,
                    sigma=0.02,
                    reduction="mean_volume",
                )
                optimizer_step(optim, model, loss, bar)
                step += 1
        bar.close()
        save_model(model, out)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("digits TDT: %d parameters, %d steps -> %s (%.1f MB)", n_params, step, out, out.stat().st_size / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["tiny", "digits", "fullsize", "tiny_diarizer", "diarizer"])
    parser.add_argument("--out", type=Path, required=True, help="where to write the .nemo file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1800, help="digits: training steps (~3/s on 2 cores)")
    parser.add_argument("--utterances", type=int, default=2400, help="digits: training utterances")
    shared = Path(__file__).resolve().parent.parent.parent / "shared"
    parser.add_argument("--arch", type=Path, default=shared / "parakeet_tdt_0.6b_v3_arch.yaml", help="fullsize")
    parser.add_argument(
        "--tokenizer-dir", type=Path, default=shared / "tokenizers" / "bpe_8192_random", help="fullsize"
    )
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=4.0,
        help="fullsize: calibrate random weights to emit this many tokens per second of speech (0: leave them)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if args.kind == "tiny":
        build_tiny(args.out, args.seed)
    elif args.kind == "tiny_diarizer":
        build_tiny_diarizer(args.out, args.seed)
    elif args.kind == "diarizer":
        build_diarizer(args.out, args.seed, args.steps, args.utterances)
    elif args.kind == "fullsize":
        build_fullsize(args.out, args.seed, args.arch, args.tokenizer_dir, args.tokens_per_s)
    else:
        build_digits(args.out, args.seed, args.steps, args.utterances)


if __name__ == "__main__":
    main()
