"""loadtest.py's records and reporting: the per-request and per-stage records, the markdown table, the verdict
line, JSON/CSV files and the plot.

Kept apart so that loadtest.py holds the schedule, the statistics and the runner; this module imports nothing
of it (loadtest imports this one).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class RequestRecord:
    """One request that was scheduled, whatever became of it. Times are seconds from the run's start."""

    stage: str
    index: int
    file: str
    scheduled_s: float
    sent_s: float | None = None
    done_s: float | None = None
    latency_ms: float | None = None  # from the scheduled time to the end of the response
    status: int | None = None
    error: str | None = None  # None, "http_<status>", "timeout", "connection", "non_json", "client_overloaded"
    audio_s: float | None = None
    gpu_id: str | None = None
    batch_size: int | None = None
    queue_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StageSummary:
    stage: str
    offered_rps: float
    achieved_rps: float
    sent: int
    ok: int
    errors_by_status: dict[str, int]
    errors_by_kind: dict[str, int]
    error_rate: float
    latency_ms: dict[str, float | None]  # avg, p50, p95, p99 of successful requests
    rtfx: float | None  # audio seconds served per wall second
    gpu_share: dict[str, float]
    mean_batch_size: float | None
    breaks: bool = False


@dataclass
class RunResult:
    stages: list[StageSummary]
    requests: list[RequestRecord]
    stable_up_to_rps: float | None
    breaking_point_rps: float | None
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "stable_up_to_rps": self.stable_up_to_rps,
            "breaking_point_rps": self.breaking_point_rps,
            "interrupted": self.interrupted,
            "stages": [asdict(s) for s in self.stages],
            "requests": [asdict(r) for r in self.requests],
        }


class LoadTestError(Exception):
    """A problem the user must fix before a run can start (bad flags, no audio, unreachable server)."""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms"


def markdown_table(summaries: list[StageSummary]) -> str:
    """The results as a markdown table, one row per stage."""
    head = "| Stage | Offered req/s | Achieved req/s | OK | Errors | Avg | P50 | P95 | P99 | RTFx | Batch | GPU share |"
    rows = [head, "|" + "---|" * 12]
    for s in summaries:
        errors = ", ".join(f"{k}:{v}" for k, v in sorted(s.errors_by_kind.items())) or "0"
        share = " ".join(f"{g}:{v:.0%}" for g, v in s.gpu_share.items()) or "-"
        rows.append(
            f"| {s.stage}{' (breaks)' if s.breaks else ''} | {s.offered_rps:.1f} | {s.achieved_rps:.1f} | {s.ok} "
            f"| {errors} | {_ms(s.latency_ms['avg'])} | {_ms(s.latency_ms['p50'])} | {_ms(s.latency_ms['p95'])} "
            f"| {_ms(s.latency_ms['p99'])} | {'-' if s.rtfx is None else f'{s.rtfx:.1f}'} "
            f"| {'-' if s.mean_batch_size is None else f'{s.mean_batch_size:.1f}'} | {share} |"
        )
    return "\n".join(rows)


def verdict(result: RunResult, slo_p95_ms: float, max_error_rate: float) -> str:
    ramp = [s for s in result.stages if s.stage != "sequential"]
    if result.breaking_point_rps is None:
        top = ramp[-1] if ramp else None
        return (
            f"stable up to {result.stable_up_to_rps:g} req/s (no stage broke the SLO of p95 <= {slo_p95_ms:g} ms "
            f"and <= {max_error_rate:.1%} errors; the top stage had p95 {_ms(top.latency_ms['p95']) if top else '-'})"
            if result.stable_up_to_rps is not None
            else "no ramp stage completed"
        )
    bad = next(s for s in ramp if s.breaks)
    why = []
    if bad.latency_ms["p95"] is None or bad.latency_ms["p95"] > slo_p95_ms:
        why.append(f"p95 {_ms(bad.latency_ms['p95'])} > {slo_p95_ms:g}ms")
    if bad.error_rate > max_error_rate:
        why.append(f"errors {bad.error_rate:.1%} > {max_error_rate:.1%} ({bad.errors_by_kind})")
    stable = f"stable up to {result.stable_up_to_rps:g} req/s" if result.stable_up_to_rps else "not stable at any rate"
    return f"{stable}; breaks at {result.breaking_point_rps:g} req/s: {', '.join(why)}"


def write_outputs(result: RunResult, out: Path | None, plot: Path | None, slo_p95_ms: float) -> None:
    if out is not None:
        out.write_text(json.dumps(result.to_json(), indent=1))
        with open(out.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=list(asdict(result.requests[0]).keys()) if result.requests else ["stage"]
            )
            writer.writeheader()
            for r in result.requests:
                writer.writerow(asdict(r))
    if plot is not None:
        plot_stages(result, plot, slo_p95_ms)


def plot_stages(result: RunResult, path: Path, slo_p95_ms: float) -> None:
    """Latency percentiles and error rate against offered rate (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LoadTestError("--plot needs matplotlib: pip install matplotlib") from exc
    ramp = [s for s in result.stages if s.stage != "sequential"]
    x = [s.offered_rps for s in ramp]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for key in ("p50", "p95", "p99"):
        ax1.plot(x, [s.latency_ms[key] for s in ramp], marker="o", label=key)
    ax1.axhline(slo_p95_ms, color="red", linestyle="--", label=f"SLO p95 {slo_p95_ms:g} ms")
    if result.breaking_point_rps is not None:
        for ax in (ax1, ax2):
            ax.axvline(result.breaking_point_rps, color="grey", linestyle=":", label="breaking point")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.set_title("Latency and errors against offered load")
    errors_pct = [100 * s.error_rate for s in ramp]
    ax2.plot(x, errors_pct, marker="o", color="tab:red")
    ax2.set_ylim(0, max([1.0, *errors_pct]) * 1.1)
    ax2.set_ylabel("errors (%)")
    ax2.set_xlabel("offered rate (req/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
