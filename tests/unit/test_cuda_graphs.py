"""PARAKEET_CUDA_GRAPHS (inference.choose_cuda_graphs): auto runs a self-check at start-up and serves with CUDA graphs
only when the graph decoder gives the same tokens, timestamps, confidence and stream steps; otherwise one WARNING
says what differed and graphs stay off. On this CPU both runs take NeMo's loop decoder (graphs need CUDA), so the
check passes on its own; the failing verdicts are reached by making the second ("graphs on") run differ or raise."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from inference import ParakeetEngine, build_engine, choose_cuda_graphs, cuda_graphs_self_check

from helpers import cpu_settings


@pytest.fixture
def engine(digits_model_path: Path) -> ParakeetEngine:
    return build_engine(cpu_settings(digits_model_path), torch.device("cpu"))


def test_cuda_graphs_on_a_cpu_are_off_whatever_the_setting(engine: ParakeetEngine) -> None:
    for mode in ("auto", "true", "false"):
        choose_cuda_graphs(engine, mode, cuda=False)
        assert not engine.cuda_graphs and engine.cuda_graphs_reason == "not a CUDA device"
    info = engine.device_info()
    assert info.type == "cpu" and not info.cuda_graphs and info.cuda_graphs_reason == "not a CUDA device"


def test_cuda_graphs_self_check_compares_a_probe_that_makes_the_decoder_emit(engine: ParakeetEngine) -> None:
    problem, summary = cuda_graphs_self_check(engine)
    assert problem is None
    items, tokens, steps = (int(part.split()[0]) for part in summary.split(", "))
    assert (items, steps) == (1 + 3 + 16 + 3 + 3, 4 + 3 + 2)
    assert tokens > items  # random encoder frames make the decoder emit: the comparison is not of empty outputs


def test_cuda_graphs_auto_serves_with_them_when_the_self_check_finds_no_difference(
    engine: ParakeetEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="parakeet.engine"):
        choose_cuda_graphs(engine, "auto", cuda=True)
    assert engine.cuda_graphs_reason.startswith("on: the self-check found no difference (26 items, ")
    # (NeMo itself warns that its boosting without Triton, the CPU's, is not CUDA-graph compatible: not ours)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("parakeet")]
    assert any("TDT decoder, CUDA graphs: on: the self-check" in r.getMessage() for r in caplog.records)


def _second_run_differs(engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """From the moment graphs are switched on, decoding differs (`how` = "text", "timestamps", "step") or raises."""
    decode, step, switch = engine.decode_encoded, engine.decode_step, engine.set_cuda_graphs
    on = {"value": False}

    def set_cuda_graphs(value: bool) -> None:
        on["value"] = value
        switch(value)

    def decode_encoded(*args: Any, **kwargs: Any) -> Any:
        transcripts, stages = decode(*args, **kwargs)
        if on["value"] and how == "raise":
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        if on["value"] and how == "text":
            transcripts = [replace(transcripts[0], text=transcripts[0].text + " x"), *transcripts[1:]]
        if on["value"] and how == "timestamps":
            w = transcripts[-1].words[-1]
            transcripts[-1] = replace(transcripts[-1], words=(*transcripts[-1].words[:-1], w.shifted(0.08)))
        return transcripts, stages

    def decode_step(*args: Any) -> Any:
        results = step(*args)
        if on["value"] and how == "step":
            results[-1] = replace(results[-1], tokens=(*results[-1].tokens, 1))
        return results

    monkeypatch.setattr(engine, "set_cuda_graphs", set_cuda_graphs)
    monkeypatch.setattr(engine, "decode_encoded", decode_encoded)
    monkeypatch.setattr(engine, "decode_step", decode_step)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("text", "offline batch 0 item 0: text differs"),
        ("timestamps", "offline batch 0 item 0: words differ"),
        ("step", "stream step 0 stream 3: "),
        ("raise", "the CUDA-graph decoder raised RuntimeError: CUDA error: operation not permitted"),
    ],
)
def test_cuda_graphs_auto_stays_off_with_one_warning_when_the_self_check_fails(
    engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str, expected: str
) -> None:
    _second_run_differs(engine, monkeypatch, how)
    with caplog.at_level(logging.INFO, logger="parakeet.engine"):
        choose_cuda_graphs(engine, "auto", cuda=True)
    assert not engine.cuda_graphs
    assert engine.cuda_graphs_reason.startswith(f"off: the self-check failed: {expected}"), engine.cuda_graphs_reason
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("parakeet")
    ]
    assert len(warnings) == 1 and warnings[0].startswith("CUDA graphs off: the start-up self-check failed (26 items")
    assert expected in warnings[0]


def test_cuda_graphs_forced_either_way_skip_the_self_check(
    engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _second_run_differs(engine, monkeypatch, "raise")  # a self-check would fail: forcing never runs it
    choose_cuda_graphs(engine, "true", cuda=True)
    assert engine.cuda_graphs_reason == "on: PARAKEET_CUDA_GRAPHS=true"
    choose_cuda_graphs(engine, "false", cuda=True)
    assert engine.cuda_graphs_reason == "off: PARAKEET_CUDA_GRAPHS=false" and not engine.cuda_graphs
