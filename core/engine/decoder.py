"""A compact decoder for the Llama family (Llama 2/3, Qwen2/2.5, Mistral, SmolLM) with a KV cache.

What it is: the forward pass this project owns, so that it can run draft layers as fuzzy
layer-parallel groups (docs/method.md#fuzzy-layer-parallel-groups) and crop its cache after each round.
Weights of all layers are stacked along a leading layer axis, so a group of N consecutive layers
is a view `w[l:l+N]` and its N attentions run as one batched computation (`bmm` over N). A draft
with weight-only quantized linears (quantize.py) runs them one packed-kernel call per layer.
What it is not: a loader (see `loading.py`) or a tensor-parallel model (sharding is applied from
outside). Batch size is 1 throughout, as in the paper; the batch axis is left out of all shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F

from ..settings import Group  # [start, end): the draft layers that run as one step


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters; `kind` is one of default, linear, llama3."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_position: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    qkv_bias: bool = False  # Qwen2 has q/k/v bias; Llama's attention_bias adds an o bias too
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"

    def __post_init__(self) -> None:
        assert self.n_heads % self.n_kv_heads == 0, "query heads must be a multiple of KV heads"


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:  # [head_dim // 2] fp32
    """Inverse frequencies as transformers computes them (default, linear and llama3 scaling)."""
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.kind == "linear":
        return inv / rope.factor
    if rope.kind == "llama3":
        low_wavelen = rope.original_max_position / rope.low_freq_factor
        high_wavelen = rope.original_max_position / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    if rope.kind != "default":
        raise ValueError(f"unsupported RoPE scaling {rope.kind!r} (supported: default, linear, llama3)")
    return inv


class KVCache:
    """Preallocated keys and values for every layer of one model, batch size 1.

    k, v: [n_layers, n_kv_heads, max_len, head_dim]. `length` positions are valid; `crop(n)` drops
    everything from position n on (nothing is moved: later writes overwrite it).
    """

    def __init__(self, cfg: DecoderConfig, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.n_layers, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def crop(self, length: int) -> None:
        assert 0 <= length <= self.length, (length, self.length)
        self.length = length

    def compact(self, start: int, keep: torch.Tensor) -> None:
        """Keep the entries at slots `keep` [m] (ascending, all >= start), moved to start..start+m-1,
        and drop everything else from `start` on: a token tree's accepted path after verification."""
        m = keep.numel()
        assert m == 0 or (int(keep.min()) >= start and int(keep.max()) < self.length), (start, keep, self.length)
        if m:
            # Advanced indexing copies first, so overlapping source and destination slots are safe.
            self.k[:, :, start: start + m] = self.k[:, :, keep]
            self.v[:, :, start: start + m] = self.v[:, :, keep]
        self.length = start + m

    def valid(self) -> tuple[torch.Tensor, torch.Tensor]:  # 2 x [n_layers, n_kv_heads, length, head_dim]
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


@dataclass
class DecoderWeights:
    """All layers' weights stacked on a leading layer axis (nn.Linear layout: [out, in]). In a quantized
    draft (quantize.py) wqkv, wo, w_gate_up and w_down are QuantStacks and lm_head a QuantLinear."""

    embed: torch.Tensor  # [vocab, D]
    wqkv: torch.Tensor  # [L, (Hq + 2 Hkv) * hd, D]
    bqkv: torch.Tensor | None  # [L, (Hq + 2 Hkv) * hd]
    wo: torch.Tensor  # [L, D, Hq * hd]
    bo: torch.Tensor | None  # [L, D]
    norm_in: torch.Tensor  # [L, D]
    norm_post: torch.Tensor  # [L, D]
    w_gate_up: torch.Tensor  # [L, 2F, D]
    b_gate_up: torch.Tensor | None  # [L, 2F]
    w_down: torch.Tensor  # [L, D, F]
    b_down: torch.Tensor | None  # [L, D]
    norm: torch.Tensor  # [D]
    lm_head: torch.Tensor  # [vocab, D] (the embedding itself when tied)


@dataclass(frozen=True)
class TreeAttention:
    """Where the new tokens of one forward sit in a token tree (batch size 1, T new tokens).

    positions: [T] int64 RoPE positions (prefix length + depth - 1 for a node at depth >= 1).
    visible: [T, W] bool, which of the last W cache slots (the tree part, the new tokens included)
    each new token attends to: its ancestors and itself. Every slot before the tree part (the
    committed prefix) is visible to all of them, unless `prefix` [T] says how many of the first
    prefix slots each token sees (the auto-tuner's probe: drafting chains that start inside the prefix).
    """

    positions: torch.Tensor  # [T] int64
    visible: torch.Tensor  # [T, W] bool
    prefix: torch.Tensor | None = None  # [T] int64

    def __post_init__(self) -> None:
        assert self.positions.dim() == 1 and self.visible.dim() == 2, (self.positions.shape, self.visible.shape)
        assert self.visible.shape[0] == self.positions.numel() <= self.visible.shape[1], self.visible.shape


# `span(phase, label)` returns a context manager that times one piece of a forward.
SpanFn = Callable[[str, str], ContextManager]


@dataclass(frozen=True)
class ForwardOptions:
    """How one forward runs and what it returns, beyond its tokens, position and cache. Each field
    serves one kind of caller, so a wrapper (parallel.Announced) forwards the value as it is.

    groups: the layer plan; None means exact sequential layers (calibration, the base).
    span: a timer for drafting; each group's attention and MLPs are timed as draft.attn / draft.mlp.
    all_logits: logits of every token [T, vocab] (verification, trees) instead of the last one's [1, vocab].
    logits: False skips the final norm and LM head (a follower rank or a prefill that only fills the cache).
    taps: when a list, each group's input hidden state [T, D] is appended to it (the auto-tuner compares
    the inputs of exact layers); the list is the caller's, so frozen options still fill it.
    tree: where the new tokens sit in a token tree (tree.py); None is a plain causal run.
    """

    groups: Sequence[Group] | None = None
    span: SpanFn | None = None
    all_logits: bool = False
    logits: bool = True
    taps: list[torch.Tensor] | None = None
    tree: TreeAttention | None = None


def sequential_groups(n_layers: int) -> tuple[Group, ...]:
    return tuple((i, i + 1) for i in range(n_layers))


class Decoder:
    """Forward pass over stacked weights; `groups` chooses exact (all size 1) or fuzzy execution."""

    def __init__(self, cfg: DecoderConfig, weights: DecoderWeights):
        self.cfg = cfg
        self.w = weights
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device
        self.inv_freq = rope_inv_freq(cfg.rope, cfg.head_dim).to(self.device)  # [hd / 2] fp32
        self.exact = sequential_groups(cfg.n_layers)
        # Hooks set from outside for multi-device runs (parallel.py); the model knows nothing of ranks.
        # attend(h, group, pos, cache, rope, mask) -> [N, T, D]: a group's attention outputs.
        self.attend: Callable = self._attention
        # reduce(x) -> x: sums a tensor-parallel partial result (after o_proj and down_proj).
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.cfg, max_len, self.dtype, self.device)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # x [..., T, D], weight [..., D] broadcastable; fp32 statistics as transformers does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return weight * xf.to(x.dtype)

    def _rope(self, pos: int, n: int, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # -> 2 x [T, hd]; positions [T] overrides pos..pos+n-1 (tree nodes share positions by depth)
        if positions is None:
            t = torch.arange(pos, pos + n, device=self.device, dtype=torch.float32)
        else:
            t = positions.to(self.device, torch.float32)
        freqs = torch.outer(t, self.inv_freq)  # [T, hd / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @staticmethod
    def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [N, H, T, hd]; rotate_half convention of transformers' Llama/Qwen2.
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _mask(self, pos: int, n: int) -> torch.Tensor | None:  # [T, S] bool or None
        end = pos + n
        window = self.cfg.sliding_window
        if n == 1 and (window is None or end <= window):
            return None
        q = torch.arange(pos, end, device=self.device)[:, None]
        k = torch.arange(end, device=self.device)[None, :]
        allowed = k <= q
        if window is not None:
            allowed &= k > q - window
        return allowed

    def _tree_mask(self, pos: int, tree: TreeAttention) -> torch.Tensor:  # [T, S] bool, S = pos + T
        T, W = tree.visible.shape
        window = self.cfg.sliding_window
        if window is not None and int(tree.positions.max()) >= window:
            raise ValueError(f"token trees past the sliding window ({window} tokens) are not supported")
        if tree.prefix is None:
            prefix = torch.ones((T, pos + T - W), dtype=torch.bool, device=self.device)
        else:
            prefix = torch.arange(pos + T - W, device=self.device)[None, :] < tree.prefix.to(self.device)[:, None]
        return torch.cat([prefix, tree.visible.to(self.device, torch.bool)], dim=1)

    def _attention(self, h: torch.Tensor, g: Group, pos: int, cache: KVCache, rope, mask) -> torch.Tensor:
        """Attention of layers g[0]..g[1]-1, all from the same input h; returns [N, T, D].

        With N = 1 this is the exact layer's attention. With N > 1 the N layers' projections and
        attentions run as one batched computation over the stacked weights (fuzzy group).
        """
        cfg, w = self.cfg, self.w
        l, r = g
        n, T = r - l, h.shape[0]
        hq, hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        xn = self._rms(h, w.norm_in[l:r, None, :])  # [N, T, D]
        qkv = _group_linear(xn, w.wqkv, w.bqkv, l, r)  # [N, T, (Hq + 2 Hkv) hd]
        q, k, v = qkv.split((hq * hd, hkv * hd, hkv * hd), dim=-1)
        q = q.view(n, T, hq, hd).transpose(1, 2)  # [N, Hq, T, hd]
        k = k.view(n, T, hkv, hd).transpose(1, 2)  # [N, Hkv, T, hd]
        v = v.view(n, T, hkv, hd).transpose(1, 2)
        cos, sin = rope
        q, k = self._apply_rope(q, cos, sin), self._apply_rope(k, cos, sin)
        end = pos + T
        cache.k[l:r, :, pos:end] = k
        cache.v[l:r, :, pos:end] = v
        o = F.scaled_dot_product_attention(
            q, cache.k[l:r, :, :end], cache.v[l:r, :, :end], attn_mask=mask, enable_gqa=hq != hkv)
        o = o.transpose(1, 2).reshape(n, T, hq * hd)  # [N, T, Hq hd]
        out = _group_linear(o, w.wo, w.bo, l, r)  # [N, T, D]
        return out if self.reduce is None else self.reduce(out)

    def _mlp(self, x: torch.Tensor, i: int) -> torch.Tensor:  # x [T, D] -> [T, D]
        w = self.w
        gu = _linear(self._rms(x, w.norm_post[i]), w.w_gate_up[i],
                     None if w.b_gate_up is None else w.b_gate_up[i])  # [T, 2F]
        gate, up = gu.chunk(2, dim=-1)
        out = _linear(F.silu(gate) * up, w.w_down[i], None if w.b_down is None else w.b_down[i])
        return out if self.reduce is None else self.reduce(out)

    def forward(self, tokens: torch.Tensor, pos: int, cache: KVCache,
                opts: ForwardOptions = ForwardOptions()) -> torch.Tensor | None:
        """Run tokens [T] at positions pos..pos+T-1, writing their K/V; returns logits [T or 1, vocab] fp32
        (None with opts.logits False). pos is always the first cache slot written; with opts.tree, the
        RoPE positions and the attention mask come from it instead (token-tree drafting and
        verification; see tree.py).

        A group of N > 1 in opts.groups runs fuzzy: the N attentions read the group input h, then the N
        MLPs run in order (docs/method.md#fuzzy-layer-parallel-groups):
            a_j = Attn_{l+j}(RMSNorm_in(h));  x = h;  x += a_j;  x += MLP_{l+j}(RMSNorm_post(x))
        """
        assert tokens.dim() == 1 and tokens.numel() > 0, tokens.shape
        T = tokens.numel()
        assert pos == cache.length and pos + T <= cache.max_len, (pos, cache.length, T, cache.max_len)
        groups = self.exact if opts.groups is None else opts.groups
        span, taps, tree = opts.span, opts.taps, opts.tree
        if tree is None:
            rope, mask = self._rope(pos, T), self._mask(pos, T)
        else:
            assert tree.positions.numel() == T, (tree.positions.shape, T)
            rope, mask = self._rope(pos, T, tree.positions), self._tree_mask(pos, tree)
        x = self.w.embed[tokens]  # [T, D]
        for g in groups:
            label = f"L{g[0]}" if g[1] - g[0] == 1 else f"L{g[0]}-{g[1] - 1}"
            if taps is not None:
                taps.append(x)
            with span("draft.attn", label) if span else _NULL:
                a = self.attend(x, g, pos, cache, rope, mask)  # [N, T, D]
            with span("draft.mlp", label) if span else _NULL:
                for j, i in enumerate(range(*g)):
                    x = x + a[j]
                    x = x + self._mlp(x, i)
        cache.length = pos + T
        if not opts.logits:
            return None
        if not opts.all_logits:
            x = x[-1:]
        with span("draft.mlp", "head") if span else _NULL:  # final norm + LM head: drafting work too
            return _linear(self._rms(x, self.w.norm), self.w.lm_head).float()


def _linear(x: torch.Tensor, w, b: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b for a float weight [out, in] or a weight-only quantized one (quantize.QuantLinear)."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, b)
    y = w(x)
    return y if b is None else y + b


def _group_linear(x: torch.Tensor, w, b: torch.Tensor | None, l: int, r: int) -> torch.Tensor:
    """x [N, T, in] through layers l..r-1 of a stacked weight [L, out, in] -> [N, T, out]: one batched
    matmul for float weights; one packed-kernel call per layer for quantized ones (quantize.QuantStack:
    torch's int8/int4 kernels are 2-D only)."""
    if isinstance(w, torch.Tensor):
        if b is None:
            return torch.bmm(x, w[l:r].transpose(1, 2))
        return torch.baddbmm(b[l:r, None, :], x, w[l:r].transpose(1, 2))
    out = torch.stack([w[i](x[j]) for j, i in enumerate(range(l, r))])
    return out if b is None else out + b[l:r, None, :]


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()
