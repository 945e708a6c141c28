"""The per-round record: the one stream that the CLI, dashboard, benchmarks and reports consume.

Plain Python values only (no tensors), versioned so that a saved run can be replayed later
(docs/conventions.md#per-round-record). A run file is JSON Lines: one header, then one record per round.
Version 2 replaced version 1's `peak_memory_bytes` (the process's lifetime peak RSS on CPU, the same
figure for every later run) with the run's own memory figures; version 1 files still load, their
memory figures unknown (0).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from ..files import atomic_writer

RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)
PHASES = ("draft.attn", "draft.mlp", "draft.comm", "verify", "verify.comm", "calibrate", "sample", "idle",
          "overhead")
ORIGINS = ("prefill", "accepted", "recovered", "bonus")


@dataclass(frozen=True)
class Span:
    """One timed piece of work on one device lane; times in ns from the run's t0."""

    phase: str
    start_ns: int
    end_ns: int
    rank: int = 0
    label: str = ""

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class RoundRecord:
    """One round: what was drafted, what the base accepted, what was emitted, and where time went.

    token_ids/origins: the emitted tokens, each tagged prefill | accepted | recovered | bonus
    (vanilla decoding emits one `bonus` token per round: zero drafts, all accepted).
    end_ns: when the round's tokens were available, from the run's t0.
    stop: why generation ended after this round (eos | stop_string | max_new_tokens), else None.
    memory_source / run_start_memory_bytes / run_peak_memory_bytes: this run's memory (tracing.RunMemory):
    "rss" (CPU: the process's resident set, loaded models included) or "cuda" (allocator bytes), its
    reading when the run started and its peak from then to this round's end; "" and 0 when unknown.
    tree_tokens/tree_parents/tree_path: a token-tree round's shape: node tokens and parent node
    indices (-1 = the root, the last committed token) in creation order, and the accepted path as
    node indices; empty for chains. `drafted` is then the accepted path continued by first children
    to a leaf, so accepted / drafted reads per depth as for a chain.
    """

    index: int
    token_ids: tuple[int, ...]
    origins: tuple[str, ...]
    drafted: tuple[int, ...]
    accepted: int
    phase_s: dict[str, float]
    spans: tuple[Span, ...]
    end_ns: int
    memory_source: str = ""
    run_start_memory_bytes: int = 0
    run_peak_memory_bytes: int = 0
    calibrated: bool = False
    flags: tuple[str, ...] = ()
    stop: str | None = None
    version: int = RECORD_VERSION
    tree_tokens: tuple[int, ...] = ()
    tree_parents: tuple[int, ...] = ()
    tree_path: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        assert len(self.token_ids) == len(self.origins), (self.token_ids, self.origins)
        assert len(self.tree_tokens) == len(self.tree_parents), (self.tree_tokens, self.tree_parents)
        assert all(o in ORIGINS for o in self.origins), self.origins
        assert 0 <= self.accepted <= len(self.drafted)


@dataclass(frozen=True)
class RunHeader:
    """What a saved run was: settings, models and prompt, enough to replay or compare it."""

    settings: dict
    base: str
    draft: str | None
    prompt_ids: tuple[int, ...]
    device: str
    dtype: str
    created: str = ""
    extra: dict = field(default_factory=dict)
    version: int = RECORD_VERSION


def record_to_dict(rec: RoundRecord) -> dict:
    return asdict(rec)


def _upgrade(d: dict) -> dict:
    """A version 1 record as version 2: its peak_memory_bytes was the process's lifetime peak, not the
    run's, so it is dropped (unknown) rather than shown as the run's."""
    if d.get("version") == 1:
        d = {k: v for k, v in d.items() if k != "peak_memory_bytes"}
        d["version"] = RECORD_VERSION
    return d


def record_from_dict(d: dict) -> RoundRecord:
    if d.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"run record version {d.get('version')} is not supported (this is {RECORD_VERSION})")
    d = _upgrade(d)
    spans = tuple(Span(**s) for s in d["spans"])
    tuples = {k: tuple(d[k]) for k in ("token_ids", "origins", "drafted", "flags", "tree_tokens", "tree_parents",
                                       "tree_path") if k in d}
    return RoundRecord(**{**d, **tuples, "spans": spans})


def save_run(path: str | Path, header: RunHeader, records: Iterable[RoundRecord]) -> None:
    """Write header + records as JSON Lines (to a temporary name first, then rename)."""
    with atomic_writer(path) as f:
        f.write(json.dumps({"kind": "header", **asdict(header)}) + "\n")
        for rec in records:
            f.write(json.dumps({"kind": "round", **record_to_dict(rec)}) + "\n")


def load_run(path: str | Path) -> tuple[RunHeader, list[RoundRecord]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("kind") != "header":
        raise ValueError(f"{path}: not an easyspec run file (no header line)")
    head = {k: v for k, v in lines[0].items() if k != "kind"}
    if head.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: run file version {head.get('version')} is not supported")
    header = RunHeader(**{**head, "prompt_ids": tuple(head["prompt_ids"]), "version": RECORD_VERSION})
    records = [record_from_dict({k: v for k, v in d.items() if k != "kind"}) for d in lines[1:]]
    return header, records
