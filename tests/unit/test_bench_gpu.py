"""bench/gpu.sh on a machine without a GPU: one line saying so, exit 2, nothing measured; and its summary
from the steps' outputs (the tables and ratios the GPU run reports). The whole pipeline on the CPU:
`bench/gpu.sh --dry-run` (BENCHMARKS.md "GPU serving")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import gpu as bench_gpu

from helpers import ROOT


def test_bench_gpu_without_a_gpu_says_so_in_one_line_and_measures_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", "bench/gpu.sh", str(tmp_path / "prepared"), str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bench_gpu.sh: no CUDA GPU is visible to torch (torch.cuda.is_available() is False): nothing measured"
    ]
    assert not out.exists()


def test_bench_gpu_summary_reads_the_steps_outputs(tmp_path: Path) -> None:
    rows = [{"batch": 64, "req_per_s": 200.0}, {"batch": 256, "req_per_s": 400.0}]
    (tmp_path / "engine_graphs_off.json").write_text(json.dumps({"rows": rows}))
    rows_on = [{"batch": 64, "req_per_s": 300.0}, {"batch": 256, "req_per_s": 500.0}]
    (tmp_path / "engine_graphs_on.json").write_text(json.dumps({"rows": rows_on}))
    (tmp_path / "served").mkdir()
    served = [{"workers_per_gpu": 1, "format": "json", "achieved_rps_at_slo": 450.0}]
    (tmp_path / "served" / "served.json").write_text(json.dumps({"rows": served}))
    (tmp_path / "served" / "served.md").write_text("| served table |")
    keyword_rows = [{"phrases": 0}, {"phrases": 100, "first_ms": 90.0, "cached_ms": 52.0, "plain_ms": 50.0,
                                     "added_cached": 0.04}]  # fmt: skip
    (tmp_path / "keywords.json").write_text(json.dumps({"rows": keyword_rows}))
    diarization = {"rows": [{"model": "full", "ms_15s": 21.0, "ms_per_minute": 60.0, "rtfx": 1000.0,
                             "ms_batch4x15": 40.0, "ms_4_singles": 80.0}],
                   "hour": [{"feature_chunk_s": 60.0, "seconds": 3.5, "device_peak_over_model_mb": 250.0}]}  # fmt: skip
    (tmp_path / "diarization.json").write_text(json.dumps(diarization))
    steps = [
        {"step": "build", "status": "ok", "seconds": 60.0},
        {"step": "streams", "status": "exit 1", "seconds": 3.0},
    ]
    assert bench_gpu.summarize(tmp_path, steps) == 1  # a failed step fails the run
    text = (tmp_path / "summary.md").read_text()
    assert "| 64 | 200.0 | 300.0 | 1.50x |" in text and "| 256 | 400.0 | 500.0 | 1.25x |" in text
    assert "k = 1 json: 90% (450.0 of 500.0 req/s)" in text
    assert "| streams | exit 1 | 3 |" in text
    assert "| 100 | 90 | 52 | 50 | +4.0% |" in text
    assert "| full | 21 | 60 (1000x) | 40 | 80 |" in text
    assert "- 1 hour, features per 60 s: 3.5 s, device peak over the model 250 MB" in text
