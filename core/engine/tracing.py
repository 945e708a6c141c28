"""Timing spans on one device against a common clock (docs/conventions.md#clock).

On CPU a span is two `time.perf_counter_ns()` readings. On CUDA it is two CUDA events, resolved
to nanoseconds only when the round's spans are taken (one synchronisation per round, not per span).
Times are relative to the tracer's t0, which a multi-rank run agrees on at a barrier.
Each tracer also watches its run's memory (`RunMemory`): one tracer per run, so each run's peak.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import torch

from .records import PHASES, Span


class Tracer:
    def __init__(self, device: torch.device, rank: int = 0, t0_ns: int | None = None):
        self.rank = rank
        self.cuda = device.type == "cuda"
        self.t0_ns = time.perf_counter_ns() if t0_ns is None else t0_ns
        self._spans: list[Span] = []
        self._pending: list[tuple[str, str, object, object]] = []
        self.memory = RunMemory(device)
        if self.cuda:
            self._t0_event = torch.cuda.Event(enable_timing=True)
            self._t0_event.record()
            torch.cuda.synchronize()
            self._t0_event_ns = time.perf_counter_ns() - self.t0_ns

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.t0_ns

    @contextmanager
    def span(self, phase: str, label: str = "") -> Iterator[None]:
        assert phase in PHASES, phase
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((phase, label, start, end))
        else:
            start_ns = self.now_ns()
            yield
            self._spans.append(Span(phase, start_ns, self.now_ns(), self.rank, label))
            self.memory.sample()

    def take(self) -> tuple[Span, ...]:
        """The spans recorded since the last call, in start order."""
        if self._pending:
            torch.cuda.synchronize()
            for phase, label, start, end in self._pending:
                s = self._t0_event_ns + int(self._t0_event.elapsed_time(start) * 1e6)
                self._spans.append(Span(phase, s, s + int(start.elapsed_time(end) * 1e6), self.rank, label))
            self._pending.clear()
        spans, self._spans = tuple(sorted(self._spans, key=lambda s: s.start_ns)), []
        return spans


MEMORY_SOURCES = ("rss", "cuda")  # what a record's memory figures are: process RSS (CPU), CUDA allocator bytes


@lru_cache(maxsize=None)
def _statm(pid: int) -> int | None:
    """An open /proc/<pid>/statm (a kept descriptor reads in microseconds); per pid, so that a forked
    child never reads its parent's. None off Linux."""
    try:
        return os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        return None


def rss_bytes() -> int:
    """This process's resident set size now (models, caches and everything else it holds)."""
    fd = _statm(os.getpid())
    if fd is not None:
        return int(os.pread(fd, 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import psutil

    return int(psutil.Process().memory_info().rss)


class RunMemory:
    """One run's memory: the reading at its start and the highest reading since.

    CUDA: the allocator's bytes on the device, its peak counter reset when the run starts. CPU: the
    process's RSS, sampled at every span end and round boundary (the loaded models included; a
    peak between two samples is missed). Not `ru_maxrss`: that is the process's lifetime peak, so
    every run after the largest would report the largest's figure.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.source = "cuda" if device.type == "cuda" else "rss"
        if self.source == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.start = int(torch.cuda.memory_allocated(device))
        else:
            self.start = rss_bytes()
        self._peak = self.start

    def sample(self) -> None:
        if self.source == "rss":
            self._peak = max(self._peak, rss_bytes())

    def peak(self) -> int:
        """The run's peak so far (a fresh sample included)."""
        if self.source == "cuda":
            return max(self.start, int(torch.cuda.max_memory_allocated(self.device)))
        self.sample()
        return self._peak


def exclusive_seconds(spans: tuple[Span, ...]) -> dict[str, float]:
    """Seconds per phase on one rank, each span counted without the spans nested inside it
    (a verify span holding its all-reduces counts as verify + verify.comm, never twice)."""
    out: dict[str, float] = {}
    stack: list[list] = []  # [span, seconds of its direct children]
    ordered = sorted(spans, key=lambda s: (s.start_ns, -s.end_ns))

    def close(until_ns: int | None) -> None:
        while stack and (until_ns is None or stack[-1][0].end_ns <= until_ns):
            sp, inner = stack.pop()
            out[sp.phase] = out.get(sp.phase, 0.0) + sp.seconds - inner
            if stack:
                stack[-1][1] += sp.seconds

    for sp in ordered:
        close(sp.start_ns)
        stack.append([sp, 0.0])
    close(None)
    return out
