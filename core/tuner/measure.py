"""Measured acceptance: a layer plan or a calibration policy run by the engine itself.

What it is: the base's greedy output computed once per prompt (`reference`) and played back as
one-hot logits (`ReplayBase`), so that a plan's greedy acceptance costs draft forwards only and
equals a full run's; `measure_plan` drafts every prompt with a plan against it, and
`measure_policy` runs a calibration policy with the real base for its speed. What it is not: a
prediction (`probe.py`), or the choice among the measured plans (`tune.py`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..engine.decoder import Decoder, ForwardOptions
from ..engine.loop import Stopping, generate
from ..engine.metrics import compute
from ..planning import plan_run
from ..settings import SpecConfig
from .search import steps_of
from .types import Candidate, PolicyResult, TuneConfig

DRAFT_PHASES = ("draft.attn", "draft.mlp", "draft.comm")


class _Cursor:
    """The cache of a played-back base: only a length, as the engine expects of a KV cache."""

    def __init__(self, max_len: int):
        self.max_len, self.length = max_len, 0

    def crop(self, length: int) -> None:
        self.length = length


class ReplayBase:
    """The base model's greedy output played back as one-hot logits, for measuring greedy acceptance.

    Row i of a forward over tokens at positions pos.. predicts position pos + i + 1. While the fed
    tokens follow the recorded output, the base would have predicted the recorded next token; after
    the first difference greedy verification reads no further rows, so the result is exact. Rows past
    the recorded output (after its end-of-sequence token) are zero: the engine counts no acceptance
    past a stop, so those rows change no count either.
    """

    def __init__(self, base: Decoder, sequence: Sequence[int]):
        self.cfg, self.device = base.cfg, base.device
        self.seq = list(sequence)

    def new_cache(self, max_len: int) -> _Cursor:
        return _Cursor(max_len)

    def forward(self, tokens: torch.Tensor, pos: int, cache: _Cursor,
                opts: ForwardOptions = ForwardOptions()) -> torch.Tensor:  # [T or 1, vocab]
        n = tokens.numel()
        cache.length = pos + n
        rows = range(pos, pos + n) if opts.all_logits else range(pos + n - 1, pos + n)
        out = torch.zeros(len(rows), self.cfg.vocab_size, device=self.device)
        for i, p in enumerate(rows):
            if p + 1 < len(self.seq):
                out[i, self.seq[p + 1]] = 1.0
        return out


def reference(base: Decoder, prompt: Sequence[int], max_new_tokens: int, stopping: Stopping) -> tuple[list[int], list[int]]:
    """(prompt, the base's own greedy output): what playback and the probe replay."""
    vanilla = SpecConfig(mode="vanilla", max_new_tokens=max_new_tokens)
    return list(prompt), [t for r in generate(base, None, plan_run(vanilla, prompt, base, None), stopping)
                         for t in r.token_ids]


def _draft_seconds(records) -> float:
    return sum(r.phase_s.get(p, 0.0) for r in records for p in DRAFT_PHASES)


def measure_plan(base: Decoder, draft: Decoder, references: Sequence[tuple[list[int], list[int]]], plan: str,
                 cfg: TuneConfig, origin: str, stopping: Stopping) -> Candidate:
    """Draft every prompt with `plan` (every-round calibration) against the played-back base output."""
    per_prompt, draft_s = [], 0.0
    for prompt, out in references:
        spec = SpecConfig(mode="easyspec", groups=plan, draft_len=cfg.draft_len, max_new_tokens=cfg.max_new_tokens)
        records = list(generate(ReplayBase(base, prompt + out), draft, plan_run(spec, prompt, base, draft),
                                stopping))
        got = [t for r in records for t in r.token_ids]
        assert got == out, "playback diverged from the recorded base output"
        per_prompt.append((sum(r.accepted for r in records), sum(len(r.drafted) for r in records)))
        draft_s += _draft_seconds(records)
    return Candidate(plan, steps_of(plan), origin, sum(d for _, d in per_prompt), sum(a for a, _ in per_prompt),
                     draft_s, per_prompt=tuple(per_prompt))


def measure_policy(base: Decoder, draft: Decoder, prompts: Sequence[Sequence[int]], plan: str, policy: str,
                   cfg: TuneConfig, stopping: Stopping) -> PolicyResult:
    """Run `plan` with calibration `policy` against the real base (not played back: its speed counts)."""
    runs = []
    for prompt in prompts:
        spec = SpecConfig(mode="easyspec", groups=plan, calibration=policy, draft_len=cfg.draft_len,
                          max_new_tokens=cfg.max_new_tokens)
        runs.append(compute(list(generate(base, draft, plan_run(spec, prompt, base, draft), stopping))))
    drafted = sum(m.drafted for m in runs)
    speeds = sorted(m.tokens_per_s for m in runs)
    return PolicyResult(policy, sum(m.accepted for m in runs) / drafted if drafted else 0.0,
                        speeds[len(speeds) // 2], sum(m.calibrate_s for m in runs))
