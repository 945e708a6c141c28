"""Rotary position embeddings as transformers computes them: default, linear, llama3, dynamic NTK, YaRN and
longrope (docs/families.md#per-layer-switches).

What it is: the inverse frequencies and the cos/sin scale of one RoPE setting. What it is not: applying
them (decoder.py), or reading them from a config (models/families.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters, as transformers' `rope_parameters` name them. `kind` is one of
    ROPE_KINDS; the fields after `original_max_position` serve yarn, longrope and dynamic only."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    max_position: int = 8192  # the model's max_position_embeddings (dynamic NTK's threshold)
    attention_factor: float | None = None  # yarn/longrope cos/sin scale; None: derived from factor
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()


ROPE_KINDS = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")


def rope_inv_freq(rope: RopeConfig, dim: int, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [dim // 2] fp32, cos/sin scale) as transformers computes them for each kind;
    seq_len (the length a forward reaches) matters for dynamic and longrope only."""
    exps = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv = 1.0 / (rope.theta ** exps)
    if rope.kind == "default":
        return inv, 1.0
    if rope.kind == "linear":
        return inv / rope.factor, 1.0
    if rope.kind == "llama3":
        low_wavelen = rope.original_max_position / rope.low_freq_factor
        high_wavelen = rope.original_max_position / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if rope.kind == "dynamic":  # NTK: a larger base once a forward reaches past max_position
        seq = max(seq_len or 0, rope.max_position)
        base = rope.theta * ((rope.factor * seq / rope.max_position) - (rope.factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** exps), 1.0
    if rope.kind == "yarn":
        return _yarn(rope, dim, exps)
    if rope.kind == "longrope":  # long factors once a forward reaches past the original context
        long = seq_len is not None and seq_len > rope.original_max_position
        ext = torch.tensor(rope.long_factor if long else rope.short_factor, dtype=torch.float32)
        scale = rope.attention_factor
        if scale is None:
            scale = 1.0 if rope.factor <= 1.0 else math.sqrt(
                1 + math.log(rope.factor) / math.log(rope.original_max_position))
        return 1.0 / (ext * rope.theta ** exps), scale
    raise ValueError(f"unsupported RoPE scaling {rope.kind!r} (supported: {', '.join(ROPE_KINDS)})")


def _yarn(rope: RopeConfig, dim: int, exps: torch.Tensor) -> tuple[torch.Tensor, float]:
    """YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between (transformers')."""
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor, scale = rope.factor, rope.attention_factor
    if scale is None:
        scale = (mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
                 if rope.mscale and rope.mscale_all_dim else mscale(factor))

    def correction_dim(rotations: float) -> float:
        return dim * math.log(rope.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = rope.theta ** exps
    extrapolation = 1 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(scale)
