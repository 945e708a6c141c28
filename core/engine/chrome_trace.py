"""Chrome Trace Event JSON from per-round records (opens in Perfetto or chrome://tracing).

One process per rank, one thread per lane (phase family), complete events (`ph: X`) in
microseconds, names and colours by phase, a counter of tokens emitted per round, and a flow
arrow from each round's last draft span to the verify that consumed it (docs/conventions.md#chrome-trace-format).
Concurrent spans (a verify and the all-reduces inside it) sit on separate lanes.
What it is not: a tracer (the spans come from `tracing.py` through the records) or a viewer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..files import write_text_atomic
from .records import RoundRecord

LANES = {  # phase -> (lane id, lane name)
    "draft.attn": (1, "draft attention"), "draft.mlp": (2, "draft MLP"), "draft.comm": (3, "communication"),
    "verify.comm": (3, "communication"), "idle": (4, "idle"), "calibrate": (5, "calibrate"),
    "verify": (6, "verify"), "sample": (7, "sample"), "overhead": (8, "overhead"),
}
# Trace-viewer reserved colour names, one per phase.
COLOURS = {"draft.attn": "thread_state_running", "draft.mlp": "rail_response", "draft.comm": "thread_state_iowait",
           "verify.comm": "thread_state_iowait", "idle": "thread_state_sleeping", "calibrate": "rail_animation",
           "verify": "rail_load", "sample": "generic_work", "overhead": "grey"}


def chrome_trace(records: Sequence[RoundRecord], device: str = "cpu") -> dict:
    events: list[dict] = []
    ranks = sorted({s.rank for r in records for s in r.spans}) or [0]
    for rank in ranks:
        events.append({"ph": "M", "name": "process_name", "pid": rank, "args": {"name": f"rank {rank} ({device})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "args": {"sort_index": rank}})
        for tid, name in sorted(set(LANES.values())):
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": name}})
    for rec in records:
        last_draft = None
        for s in rec.spans:
            tid = LANES[s.phase][0]
            ev = {"ph": "X", "name": s.label or s.phase, "cat": s.phase, "pid": s.rank, "tid": tid,
                  "ts": s.start_ns / 1e3, "dur": (s.end_ns - s.start_ns) / 1e3, "cname": COLOURS[s.phase],
                  "args": {"round": rec.index, "phase": s.phase, "label": s.label}}
            events.append(ev)
            if s.rank == 0 and s.phase.startswith("draft") and s.phase != "draft.comm":
                last_draft = s
            if s.rank == 0 and s.phase == "verify" and last_draft is not None:
                flow = {"name": "draft → verify", "cat": "flow", "id": rec.index, "pid": 0}
                events.append({**flow, "ph": "s", "tid": LANES[last_draft.phase][0], "ts": last_draft.end_ns / 1e3 - 0.001})
                events.append({**flow, "ph": "f", "bp": "e", "tid": tid, "ts": s.start_ns / 1e3})
                last_draft = None
        events.append({"ph": "C", "name": "tokens per round", "pid": 0, "ts": rec.end_ns / 1e3,
                       "args": {"emitted": len(rec.token_ids), "accepted": rec.accepted}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(path: str | Path, records: Sequence[RoundRecord], device: str = "cpu") -> None:
    write_text_atomic(path, json.dumps(chrome_trace(records, device)))
