"""Classifying a greedy output that differs from the base's own greedy decoding (docs/conventions.md#ties).

What it is: the one place that says whether two greedy token lists of the same prompt are `equal`, differ
by a rounding `tie`, or are `different` (a bug). At the first differing position the base's logits are
recomputed in fp32 from the same weights (the session's weights upcast, so only the arithmetic changes),
and the two sides' tokens are compared there:
- `tie`: both tokens are within the stated margin of fp32's top logit (so their two fp32 logits are within
  it of each other too); `fp32_pick` says which token fp32 itself picks (one of the two, or a third token
  as close). Rounding in the session's dtype may legitimately pick either.
- `different`: one of the tokens is further below fp32's top logit than rounding can explain, or the
  token lists differ in length without a differing token. In any mode and any dtype that is a bug.
The margin (`stated_margin`): in fp32, the genuine-tie rule of 1e-5 (summation order alone); in bf16, a few
units in the last place of the logit scale (see `LOW_PRECISION_ULPS`).
What it is not: a test helper (the CLI, the dashboard, the pilot, the report and the benchmarks all use it).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Sequence

import torch

from .decoder import Decoder
from .verdicts import GreedyCheck, first_difference

logger = logging.getLogger(__name__)

# fp32: the base's top two logits within 1e-5 are a genuine tie that summation order can flip
# (docs/conventions.md#ties); a kernel's accumulation order moves fp32 logits of magnitude ~10 by ~1e-6.
FP32_TIE_MARGIN = 1e-5
# bf16 keeps 8 significant bits: a logit of magnitude |x| in [2^e, 2^(e+1)) is stored to a unit in the last
# place of 2^(e-7) (eps * 2^e, eps = 2^-7), i.e. a relative error of about |x| * 2^-8 per rounding. Each
# side's logit at the differing position carries at least its final rounding (half a unit) plus the
# rounding accumulated in the bf16 residual stream through every layer (the verify forward of k+1 tokens
# and vanilla's one-token forward sum in different orders, so the two sides round differently); two sides
# with about two units each gives 4 units of the larger logit. A gap beyond that is not rounding.
LOW_PRECISION_ULPS = 4


def stated_margin(dtype: torch.dtype, scale: float) -> float:
    """The largest fp32 logit gap that rounding in `dtype` explains, for logits of magnitude `scale`."""
    if dtype == torch.float32:
        return FP32_TIE_MARGIN
    exponent = math.floor(math.log2(max(abs(scale), 1.0)))  # below 1 the residual stream's rounding dominates
    return LOW_PRECISION_ULPS * torch.finfo(dtype).eps * 2.0 ** exponent





def fp32_copy(base: Decoder, device: torch.device | None = None) -> Decoder:
    """The same weights upcast to fp32 (exact: every bf16 value is an fp32 value), on `device` (default: the
    base's); the base itself when it is already fp32 there. Not for a tensor-parallel shard: its forward sums
    partial results across ranks."""
    assert base.reduce is None, "a tensor-parallel shard: load a whole base (load_fp32_base)"
    device = base.device if device is None else device
    if base.dtype == torch.float32 and base.device == device:
        return base
    w = base.w
    upcast = {name: None if t is None else t.to(device, torch.float32) for name, t in vars(w).items()}
    if w.lm_head is w.embed:  # tied: keep one copy
        upcast["lm_head"] = upcast["embed"]
    return Decoder(base.cfg, replace(w, **upcast))


def load_fp32_base(folder, dtype: torch.dtype, device: torch.device, vocab: int | None = None) -> Decoder:
    """A whole base from its checkpoint folder, rounded to the session's dtype first (the same weights the
    session runs), then upcast; `vocab`: the ids the session's base scores (a pair's shared vocabulary).
    For a multi-device session, whose rank 0 holds only its shard."""
    from ..models.loading import load_decoder

    return fp32_copy(load_decoder(folder, dtype, device, vocab=vocab))


class Fp32Reference:
    """A whole base decoder and its fp32 copy, built on first use and kept: what `compare_greedy` needs from
    a Session, for callers that hold decoders (the benchmarks)."""

    def __init__(self, base: Decoder):
        self.base, self.dtype = base, str(base.dtype).removeprefix("torch.")
        self._fp32: Decoder | None = None

    def fp32_base(self) -> Decoder:
        if self._fp32 is None:
            self._fp32 = fp32_copy(self.base)
        return self._fp32


def compare_greedy(reference_base, prompt_ids: Sequence[int], tokens: Sequence[int],
                   reference: Sequence[int]) -> GreedyCheck:
    """Classify `tokens` against `reference` (the base's own greedy output) for the same prompt.

    reference_base: a Session or an Fp32Reference (their dtype, and their fp32 base built once on first
    use), or a whole base Decoder (upcast for this one check when it is not fp32).
    """
    if not hasattr(reference_base, "fp32_base"):
        reference_base = Fp32Reference(reference_base)
    dtype = reference_base.dtype
    i = first_difference(tokens, reference)
    if i is None:
        return GreedyCheck("equal", dtype)
    if i >= min(len(tokens), len(reference)):
        return GreedyCheck("different", dtype, index=i)
    base = reference_base.fp32_base()
    a, b = int(tokens[i]), int(reference[i])
    logits = fp32_logits(base, [*prompt_ids, *reference[:i]])  # [vocab]
    top = float(logits.max())
    la, lb = float(logits[a]), float(logits[b])
    allowed = stated_margin(getattr(torch, dtype), top)
    gap = top - min(la, lb)
    check = GreedyCheck("tie" if gap <= allowed else "different", dtype, i, a, b, abs(la - lb), gap, allowed,
                        int(logits.argmax()))
    (logger.info if check.verdict == "tie" else logger.warning)("greedy check: %s", check.describe())
    return check


def fp32_logits(base: Decoder, ids: Sequence[int]) -> torch.Tensor:  # -> [vocab] fp32
    """The fp32 base's next-token logits after `ids` (a fresh cache: independent of any run's state)."""
    assert base.dtype == torch.float32, base.dtype
    with torch.inference_mode():
        x = torch.tensor(list(ids), device=base.device)  # [T]
        return base.forward(x, 0, base.new_cache(len(ids)))[0]
