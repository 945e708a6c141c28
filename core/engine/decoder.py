"""A compact decoder for the Llama-like families (Llama 2/3.x, Qwen2/2.5/3, Mistral, Phi-3/4, Gemma 2/3,
SmolLM) with a KV cache; every family difference is a switch of `DecoderConfig` (docs/families.md).

What it is: the forward pass this project owns, so that it can run draft layers as fuzzy
layer-parallel groups (docs/method.md#fuzzy-layer-parallel-groups) and crop its cache after each round.
Weights of all layers are stacked along a leading layer axis, so a group of N consecutive layers
is a view `w[l:l+N]` and its N attentions run as one batched computation (`bmm` over N). A draft
with weight-only quantized linears (quantize.py) runs them one packed-kernel call per layer.
What it is not: a loader (see `loading.py`) or a tensor-parallel model (sharding is applied from
outside). Batch size is 1 throughout, as in the paper; the batch axis is left out of all shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F

from ..settings import Group  # [start, end): the draft layers that run as one step
from .attention import CHUNK, attend
from .rope import RopeConfig, rope_inv_freq  # noqa: F401 (RopeConfig: re-exported)


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
    sliding_window: int | None = None  # window of the sliding layers
    model_type: str = "llama"
    # Per-family switches (docs/families.md); the defaults are Llama's.
    sliding_layers: tuple[bool, ...] | None = None  # which layers slide; None: all when sliding_window is set
    sliding_rope: RopeConfig | None = None  # RoPE of the sliding layers when it differs (Gemma 3)
    rotary_dim: int | None = None  # partial rotary (Phi): RoPE on the first rotary_dim dims of a head
    qk_norm: bool = False  # RMSNorm of q and k over the head dimension before RoPE (Qwen3, Gemma 3)
    norm_plus_one: bool = False  # RMSNorm as x * (1 + w) in fp32 (Gemma)
    sandwich_norm: bool = False  # norms on the attention and MLP outputs too (Gemma 2/3)
    embed_scale: float | None = None  # embeddings times this, in the model dtype (Gemma: sqrt(hidden))
    activation: str = "silu"  # or gelu_tanh (Gemma's GeGLU)
    attn_scale: float | None = None  # None: head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float | None = None  # tanh soft-capping of attention scores (Gemma 2)
    final_softcap: float | None = None  # tanh soft-capping of the logits (Gemma 2)

    def __post_init__(self) -> None:
        assert self.n_heads % self.n_kv_heads == 0, "query heads must be a multiple of KV heads"
        assert self.sliding_layers is None or len(self.sliding_layers) == self.n_layers, self.sliding_layers
        assert self.activation in ("silu", "gelu_tanh"), self.activation

    def slides(self, i: int) -> bool:
        """Whether layer i attends through the sliding window."""
        return self.sliding_window is not None and (self.sliding_layers is None or self.sliding_layers[i])


class KVCache:
    """Preallocated keys and values for every layer of one model, batch size 1.

    k, v: [n_layers, n_kv_heads, max_len, head_dim]. `length` positions are valid; `crop(n)` drops
    everything from position n on (nothing is moved: later writes overwrite it). tokens [max_len]: the
    ids whose entries these are, so that a longrope model can encode them again with its other
    factors; long_rope: whether the entries were encoded with the long ones.
    """

    def __init__(self, cfg: DecoderConfig, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.n_layers, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.tokens = torch.zeros(max_len, dtype=torch.long, device=device)
        self.length = 0
        self.long_rope = False

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
            self.tokens[start: start + m] = self.tokens[keep.to(self.tokens.device)]
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
    q_norm: torch.Tensor | None = None  # [L, hd] (cfg.qk_norm)
    k_norm: torch.Tensor | None = None  # [L, hd]
    norm_attn_out: torch.Tensor | None = None  # [L, D] on the attention output (cfg.sandwich_norm)
    norm_mlp_out: torch.Tensor | None = None  # [L, D] on the MLP output


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
        self.rotary_dim = cfg.rotary_dim or cfg.head_dim
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5
        # Each layer is of one kind, "full" or "sliding"; a kind has its own window and may have its own RoPE.
        self.kinds = tuple("sliding" if cfg.slides(i) else "full" for i in range(cfg.n_layers))
        self.ropes = {"full": cfg.rope, "sliding": cfg.sliding_rope or cfg.rope}
        # (kind, long) -> (inverse frequencies [rotary_dim / 2] fp32 on the device, cos/sin scale); long: longrope's
        # long factors, used from long_from on over a prefix encoded with them (see _encode_again)
        self._freqs = {}
        for kind, rope in self.ropes.items():
            for long in (False, True):
                inv, scale = rope_inv_freq(rope, self.rotary_dim, rope.original_max_position + 1 if long else None)
                self._freqs[kind, long] = inv.to(self.device), scale
        self.inv_freq = self._freqs["full", False][0]  # [rotary_dim / 2] fp32
        longrope = [r.original_max_position for r in self.ropes.values() if r.kind == "longrope"]
        self.long_from: int | None = min(longrope) if longrope else None
        self.exact = sequential_groups(cfg.n_layers)
        # Gemma: the embedding scale rounded to the model dtype first; made once (a per-forward host-to-device copy
        # would wait for the device)
        self.embed_scale = (None if cfg.embed_scale is None
                            else torch.tensor(cfg.embed_scale, dtype=self.dtype, device=self.device))
        # Hooks set from outside for multi-device runs (parallel.py); the model knows nothing of ranks.
        # attend(h, group, pos, cache, rope, tree_mask) -> [N, T, D]: a group's attention outputs, where rope
        # maps each layer kind in use to its (cos, sin) and tree_mask is a token tree's [T, S] mask or None.
        self.attend: Callable = self._attention
        # reduce(x) -> x: sums a tensor-parallel partial result (after o_proj and down_proj).
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.cfg, max_len, self.dtype, self.device)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # x [..., T, D], weight [..., D] broadcastable; fp32 statistics as transformers does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        if self.cfg.norm_plus_one:  # Gemma: scaled by (1 + w) in fp32, then cast
            return (xf * (1.0 + weight.float())).to(x.dtype)
        return weight * xf.to(x.dtype)

    def _rope(self, pos: int, n: int, positions: torch.Tensor | None = None,
              long: bool = False) -> dict[str, tuple]:
        # kind -> 2 x [T, rotary_dim]; positions [T] overrides pos..pos+n-1 (tree nodes share positions by depth);
        # long: longrope's long factors
        if positions is None:
            t = torch.arange(pos, pos + n, device=self.device, dtype=torch.float32)
        else:
            t = positions.to(self.device, torch.float32)
        out = {}
        for kind in set(self.kinds):
            rope = self.ropes[kind]
            if rope.kind == "dynamic":  # NTK: by the length this forward reaches
                reach = pos + n if positions is None else int(positions.max()) + 1
                inv, scale = rope_inv_freq(rope, self.rotary_dim, reach)
                inv = inv.to(self.device)
            else:
                inv, scale = self._freqs[kind, long]
            freqs = torch.outer(t, inv)  # [T, rotary_dim / 2]
            emb = torch.cat((freqs, freqs), dim=-1)
            out[kind] = ((emb.cos() * scale).to(self.dtype), (emb.sin() * scale).to(self.dtype))
        return out

    def _apply_rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [N, H, T, hd]; rotate_half convention of transformers; partial rotary leaves the last dims as they are.
        rd = cos.shape[-1]
        rot, rest = (x, None) if rd == x.shape[-1] else (x[..., :rd], x[..., rd:])
        half = rd // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        out = rot * cos + rotated * sin
        return out if rest is None else torch.cat((out, rest), dim=-1)

    def _tree_mask(self, pos: int, tree: TreeAttention) -> torch.Tensor:  # [T, S] bool, every layer kind
        T, W = tree.visible.shape
        window = self.cfg.sliding_window
        if window is not None and int(tree.positions.max()) >= window:
            raise ValueError(f"token trees past the sliding window ({window} tokens) are not supported")
        if self.long_from is not None and int(tree.positions.max()) >= self.long_from:
            raise ValueError(f"token trees past longrope's original context ({self.long_from} tokens) are not "
                             f"supported")
        if tree.prefix is None:
            prefix = torch.ones((T, pos + T - W), dtype=torch.bool, device=self.device)
        else:
            prefix = torch.arange(pos + T - W, device=self.device)[None, :] < tree.prefix.to(self.device)[:, None]
        return torch.cat([prefix, tree.visible.to(self.device, torch.bool)], dim=1)

    def _rope_of(self, rope: dict, l: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) of layers l..r-1: 2 x [T, rd] when they share a kind, else stacked per layer
        (2 x [N, 1, T, rd], broadcast over heads)."""
        kinds = self.kinds[l:r]
        if len(set(kinds)) == 1:
            return rope[kinds[0]]
        return tuple(torch.stack([rope[k][i] for k in kinds])[:, None] for i in range(2))

    def _runs(self, l: int, r: int) -> list[tuple[int, int, int | None]]:
        """Layers l..r-1 as runs of one kind: (first, end, sliding window or None), offsets from l."""
        out: list[tuple[int, int, int | None]] = []
        for j, kind in enumerate(self.kinds[l:r]):
            if out and self.kinds[l + out[-1][0]] == kind:
                out[-1] = (out[-1][0], j + 1, out[-1][2])
            else:
                out.append((j, j + 1, self.cfg.sliding_window if kind == "sliding" else None))
        return out

    def _attention(self, h: torch.Tensor, g: Group, pos: int, cache: KVCache, rope,
                   tree_mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of layers g[0]..g[1]-1, all from the same input h; returns [N, T, D].

        With N = 1 this is the exact layer's attention. With N > 1 the N layers' projections and
        attentions run as one batched computation over the stacked weights (fuzzy group). Each layer
        applies its own pre-attention norm (and, with sandwich norms, its own post-attention norm).
        """
        cfg, w = self.cfg, self.w
        l, r = g
        n, T = r - l, h.shape[0]
        hq, hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        end = pos + T
        xn = self._rms(h, w.norm_in[l:r, None, :])  # [N, T, D]
        qkv = _group_linear(xn, w.wqkv, w.bqkv, l, r)  # [N, T, (Hq + 2 Hkv) hd]
        q, k, v = qkv.split((hq * hd, hkv * hd, hkv * hd), dim=-1)
        q = q.view(n, T, hq, hd)
        k = k.view(n, T, hkv, hd)
        if w.q_norm is not None:  # over the head dimension, before RoPE (Qwen3, Gemma 3)
            q = self._rms(q, w.q_norm[l:r, None, None, :])
            k = self._rms(k, w.k_norm[l:r, None, None, :])
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [N, Hq, T, hd], [N, Hkv, T, hd]
        v = v.view(n, T, hkv, hd).transpose(1, 2)
        cos, sin = self._rope_of(rope, l, r)
        q, k = self._apply_rope(q, cos, sin), self._apply_rope(k, cos, sin)
        cache.k[l:r, :, pos:end] = k
        cache.v[l:r, :, pos:end] = v
        # One attention call per run of layers of one kind (a fuzzy group may mix full and sliding layers);
        # attention.py picks the SDPA path of this step shape.
        parts = [attend(q[a:b], cache.k[l + a: l + b, :, :end], cache.v[l + a: l + b, :, :end], pos, self.scale,
                        window, tree_mask, cfg.attn_softcap) for a, b, window in self._runs(l, r)]
        o = parts[0] if len(parts) == 1 else torch.cat(parts)  # [N, Hq, T, hd]
        o = o.transpose(1, 2).reshape(n, T, hq * hd)  # [N, T, Hq hd]
        out = _group_linear(o, w.wo, w.bo, l, r)  # [N, T, D]
        if self.reduce is not None:
            out = self.reduce(out)
        if w.norm_attn_out is not None:  # Gemma: each layer's post-attention norm on its own output
            out = self._rms(out, w.norm_attn_out[l:r, None, :])
        return out

    def _mlp(self, x: torch.Tensor, i: int) -> torch.Tensor:  # x [T, D] -> [T, D]
        if x.shape[0] > CHUNK:  # a long prefill: rows in chunks, so the [T, 2F] intermediates stay CHUNK rows
            return torch.cat([self._mlp(x[a: a + CHUNK], i) for a in range(0, x.shape[0], CHUNK)])
        w = self.w
        gu = _linear(self._rms(x, w.norm_post[i]), w.w_gate_up[i],
                     None if w.b_gate_up is None else w.b_gate_up[i])  # [T, 2F]
        gate, up = gu.chunk(2, dim=-1)
        act = F.silu(gate) if self.cfg.activation == "silu" else F.gelu(gate, approximate="tanh")
        out = _linear(act * up, w.w_down[i], None if w.b_down is None else w.b_down[i])
        if self.reduce is not None:
            out = self.reduce(out)
        return out if w.norm_mlp_out is None else self._rms(out, w.norm_mlp_out[i])

    def forward(self, tokens: torch.Tensor, pos: int, cache: KVCache,
                opts: ForwardOptions = ForwardOptions()) -> torch.Tensor | None:
        """Run tokens [T] at positions pos..pos+T-1, writing their K/V; returns logits [T or 1, vocab] fp32
        (None with opts.logits False). pos is always the first cache slot written; with opts.tree, the
        RoPE positions and the attention mask come from it instead (token-tree drafting and
        verification; see tree.py).

        A group of N > 1 in opts.groups runs fuzzy: the N attentions read the group input h, then the N
        MLPs run in order (docs/method.md#fuzzy-layer-parallel-groups; per family: docs/families.md):
            a_j = Attn_{l+j}(RMSNorm_in(h));  x = h;  x += a_j;  x += MLP_{l+j}(RMSNorm_post(x))
        """
        assert tokens.dim() == 1 and tokens.numel() > 0, tokens.shape
        T = tokens.numel()
        assert pos == cache.length and pos + T <= cache.max_len, (pos, cache.length, T, cache.max_len)
        b = self.long_from
        if b is not None and opts.tree is None and pos < b < pos + T:  # longrope: each side of the switch apart
            first = self.forward(tokens[: b - pos], pos, cache, opts)
            second = self.forward(tokens[b - pos:], b, cache, opts)
            return torch.cat([first, second]) if opts.all_logits and opts.logits else second
        long = b is not None and pos >= b
        if b is not None and long != cache.long_rope:
            self._encode_again(cache, long)
        return self._run(tokens, pos, cache, opts, long)

    def _run(self, tokens: torch.Tensor, pos: int, cache: KVCache, opts: ForwardOptions,
             long: bool) -> torch.Tensor | None:
        """forward's computation, all tokens with longrope's long factors or all with its short ones."""
        T = tokens.numel()
        groups = self.exact if opts.groups is None else opts.groups
        span, taps, tree = opts.span, opts.taps, opts.tree
        cache.tokens[pos: pos + T] = tokens
        if tree is None:
            rope, mask = self._rope(pos, T, long=long), None
        else:
            assert tree.positions.numel() == T, (tree.positions.shape, T)
            rope, mask = self._rope(pos, T, tree.positions, long), self._tree_mask(pos, tree)
        x = self.w.embed[tokens]  # [T, D]
        if self.embed_scale is not None:
            x = x * self.embed_scale
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
            logits = _linear(self._rms(x, self.w.norm), self.w.lm_head)
            cap = self.cfg.final_softcap
            return (logits if cap is None else torch.tanh(logits / cap) * cap).float()

    def _encode_again(self, cache: KVCache, long: bool) -> None:
        """longrope, as transformers' generate does it: a position at or past the original context is computed
        over a prefix encoded with the long factors, one before it over the short ones. When a forward moves
        to the other side (the run grows past it, or a verification's rejected tokens are cropped back before
        it), the cached prefix is encoded again, exactly, with the factors of that side."""
        n = cache.length
        cache.length, cache.long_rope = 0, long
        if n:
            self._run(cache.tokens[:n].clone(), 0, cache, ForwardOptions(logits=False), long)


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
