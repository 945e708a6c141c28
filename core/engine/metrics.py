"""Metrics computed from per-round records (docs/conventions.md#metrics: the definitions vLLM and llama.cpp use).

AR = accepted / drafted. AL (mean accepted length) = tokens emitted per drafting round, recovered
or bonus token included. Per-position acceptance = rounds that accepted position i / rounds that
drafted position i. Speed figures use the records' end times on the run's clock. Memory figures
are the run's own (tracing.RunMemory): its peak, its reading at the start and the growth between.
What it is not: a measurement (it reads the records only) or the Prometheus export (`exporter.py`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from .records import PHASES, RoundRecord


@dataclass(frozen=True)
class Metrics:
    new_tokens: int
    rounds: int  # drafting rounds (vanilla: base steps), the prefill round excluded
    drafted: int
    accepted: int
    acceptance_rate: float | None
    mean_accepted_length: float | None
    per_position_acceptance: tuple[float, ...]
    tokens_per_s: float
    time_to_first_token_s: float
    time_per_output_token_s: float | None
    total_s: float
    phase_s: dict[str, float]
    draft_s: float
    verify_s: float
    calibrate_s: float
    calibrations: int
    memory_source: str  # "rss" (CPU: process resident set) | "cuda" (allocator) | "" (unknown: an old run file)
    run_peak_memory_bytes: int
    run_start_memory_bytes: int
    run_memory_growth_bytes: int  # peak above the run's start

    def as_dict(self) -> dict:
        return asdict(self)


def compute(records: Sequence[RoundRecord]) -> Metrics:
    if not records:
        raise ValueError("no rounds to compute metrics from")
    steps = [r for r in records if "prefill" not in r.origins and r.index > 0]
    drafting = [r for r in steps if r.drafted]
    new_tokens = sum(len(r.token_ids) for r in records)
    drafted = sum(len(r.drafted) for r in drafting)
    accepted = sum(r.accepted for r in drafting)
    depth = max((len(r.drafted) for r in drafting), default=0)
    per_pos = tuple(
        sum(r.accepted > i for r in drafting) / max(1, sum(len(r.drafted) > i for r in drafting))
        for i in range(depth))
    phase_s = {p: sum(r.phase_s.get(p, 0.0) for r in records) for p in PHASES}
    total_s = records[-1].end_ns / 1e9
    ttft = records[0].end_ns / 1e9
    tpot = (total_s - ttft) / (new_tokens - 1) if new_tokens > 1 else None
    peak, start = max(r.run_peak_memory_bytes for r in records), records[0].run_start_memory_bytes
    return Metrics(
        new_tokens=new_tokens, rounds=len(steps), drafted=drafted, accepted=accepted,
        acceptance_rate=accepted / drafted if drafted else None,
        mean_accepted_length=sum(len(r.token_ids) for r in drafting) / len(drafting) if drafting else None,
        per_position_acceptance=per_pos,
        tokens_per_s=new_tokens / total_s if total_s > 0 else 0.0,
        time_to_first_token_s=ttft, time_per_output_token_s=tpot, total_s=total_s, phase_s=phase_s,
        draft_s=phase_s["draft.attn"] + phase_s["draft.mlp"] + phase_s["draft.comm"],
        verify_s=phase_s["verify"] + phase_s["verify.comm"], calibrate_s=phase_s["calibrate"],
        calibrations=sum(r.calibrated for r in records),
        memory_source=records[-1].memory_source, run_peak_memory_bytes=peak,
        run_start_memory_bytes=start, run_memory_growth_bytes=max(0, peak - start) if peak else 0)


MEMORY_LABELS = {"rss": "peak RSS during this run (process, incl. loaded models)",
                 "cuda": "allocator peak during this run"}
GROWTH_LABEL = "growth above the run's start"


def memory_label(source: str) -> str:
    """What a run's peak memory figure is, for a label (English; the Japanese table has each)."""
    return MEMORY_LABELS.get(source, "peak memory during this run")
