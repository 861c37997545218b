"""Silero VAD v6 for live streams (https://github.com/snakers4/silero-vad, MIT; weights ship in the `silero-vad`
wheel), run as a stateless, batched function: implements `parakeet.core.engine.VoiceActivityModel`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch


class SileroVad:
    """The packaged TorchScript model keeps one stream's recurrent state inside the module; this wrapper calls its
    16 kHz network (the packaged module's child named "_model") directly,
    `net(x [B, 64 + 512], state [2, B, 128]) -> (prob [B, 1], state)`, with the 64-sample context and the state of
    each stream passed in and out, as the wheel's own `forward` does (silero_vad/data/silero_vad.jit). CPU, float32.
    """

    frame_samples = 512
    context_samples = 64

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        import silero_vad  # its import calls torch.set_num_threads(1): put ours back

        torch.set_num_threads(threads)
        self.net = dict(silero_vad.load_silero_vad(onnx=False).named_children())["_model"]

    @torch.inference_mode()
    def speech_probs(
        self, frames: Sequence[npt.NDArray[np.float32]], states: Sequence[Any]
    ) -> tuple[list[float], list[Any]]:
        """See `VoiceActivityModel.speech_probs`; a state is (context [64] float32 tensor, rnn [2, 1, 128])."""
        n = len(frames)
        context = torch.stack([s[0] if s is not None else torch.zeros(self.context_samples) for s in states])
        rnn = torch.cat([s[1] if s is not None else torch.zeros(2, 1, 128) for s in states], dim=1)
        x = torch.cat([context, torch.from_numpy(np.stack(frames).astype(np.float32, copy=False))], dim=1)
        probs, new_rnn = self.net(x, rnn)
        new_states = [(x[i, -self.context_samples :].clone(), new_rnn[:, i : i + 1].clone()) for i in range(n)]
        return [float(p) for p in probs[:, 0].tolist()], new_states
