"""The model families our one decoder runs, and those it refuses: a transformers config translated into
`DecoderConfig` switches, and each family's checkpoint tensors for the stacked weights (README.md#supported-model-families,
docs/families.md).

What it is: which model types are supported or refused (and why), `decoder_config`, the per-layer tensor
names of each family, and the reading of Phi's fused q/k/v and gate/up as separate tensors. What it is
not: reading files or building the decoder (`loading.py`).
"""
from __future__ import annotations

from typing import Callable

from ..engine.decoder import DecoderConfig
from ..engine.rope import ROPE_KINDS, RopeConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
# Families refused at load, and what our decoder lacks for them (README.md#supported-model-families).
MOE = "mixture-of-experts MLPs (a router choosing experts per token)"
MLA = "multi-head latent attention (compressed K/V projections)"
HYBRID = "hybrid linear-attention layers (recurrent state instead of a KV cache)"
SSM = "state-space / recurrent layers"
REFUSED_MODEL_TYPES = {
    "mixtral": ("Mixtral", MOE), "qwen2_moe": ("Qwen2-MoE", MOE), "qwen3_moe": ("Qwen3-MoE", MOE),
    "phimoe": ("Phi-3.5-MoE", MOE), "olmoe": ("OLMoE", MOE), "granitemoe": ("Granite-MoE", MOE),
    "dbrx": ("DBRX", MOE), "minimax": ("MiniMax", MOE), "glm4_moe": ("GLM-4-MoE", MOE),
    "ernie4_5_moe": ("ERNIE-4.5-MoE", MOE), "llama4": ("Llama 4", MOE), "llama4_text": ("Llama 4", MOE),
    "deepseek_v2": ("DeepSeek-V2", f"{MLA} and {MOE}"), "deepseek_v3": ("DeepSeek-V3", f"{MLA} and {MOE}"),
    "qwen3_next": ("Qwen3-Next", f"{HYBRID} and {MOE}"), "qwen3_5": ("Qwen3.5", HYBRID),
    "qwen3_5_text": ("Qwen3.5", HYBRID), "qwen3_5_moe": ("Qwen3.5-MoE", f"{HYBRID} and {MOE}"),
    "kimi_linear": ("Kimi Linear", HYBRID), "jamba": ("Jamba", f"{SSM} and {MOE}"), "falcon_h1": ("Falcon-H1", SSM),
    "mamba": ("Mamba", SSM), "mamba2": ("Mamba 2", SSM), "zamba": ("Zamba", SSM), "zamba2": ("Zamba2", SSM),
    "recurrent_gemma": ("RecurrentGemma", SSM), "lfm2": ("LFM2", f"{SSM} (short convolutions)"),
    "gpt_oss": ("gpt-oss", f"attention sinks (a learned per-head softmax term) and {MOE}"),
    "gemma3": ("Gemma 3 multimodal", "a vision tower (load the text-only gemma3_text checkpoint, e.g. Gemma 3 1B)"),
}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says which and why."""


def refusal(hf) -> str | None:
    """Why our decoder cannot run this config, or None when it can: the family and what is missing."""
    mt = hf.model_type
    if mt in REFUSED_MODEL_TYPES:
        family, missing = REFUSED_MODEL_TYPES[mt]
        return f"model type {mt!r} ({family}) is not supported: the decoder has no {missing}"
    if mt not in SUPPORTED_MODEL_TYPES:
        return (f"model type {mt!r} is not supported: the decoder covers {', '.join(SUPPORTED_MODEL_TYPES)} "
                f"(Llama 2/3.x, Mistral, Qwen2/2.5/3, Phi-3/4, Gemma 2/3, SmolLM)")
    if any(getattr(hf, f, None) for f in ("num_experts", "num_local_experts", "n_routed_experts")):
        return f"this {mt} checkpoint is not supported: the decoder has no {MOE}"
    other = sorted(set(getattr(hf, "layer_types", None) or []) - {"full_attention", "sliding_attention"})
    if other:
        return f"this {mt} checkpoint is not supported: the decoder has no {', '.join(other)} layers"
    if getattr(hf, "use_bidirectional_attention", False):
        return f"this {mt} checkpoint is not supported: it attends bidirectionally (an embedding model)"
    act = getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")
    if act not in ACTIVATIONS:
        return f"this {mt} checkpoint is not supported: the decoder has no {act!r} activation"
    return None


def _rope_config(rp: dict, hf) -> RopeConfig:
    """One RoPE setting from a transformers rope_parameters dict (or the older rope_scaling form)."""
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in ROPE_KINDS:
        raise ModelLoadError(f"model type {hf.model_type!r} with RoPE {kind!r} is not supported: the decoder "
                             f"has {', '.join(ROPE_KINDS)}")
    max_pos = hf.max_position_embeddings
    original = rp.get("original_max_position_embeddings") or getattr(hf, "original_max_position_embeddings",
                                                                       None) or 8192
    factor = rp.get("factor")
    if factor is None:  # yarn/longrope derive it from the context extension (Phi-3)
        factor = max_pos / original if kind in ("yarn", "longrope") else 1.0
    opt = {k: rp[k] for k in ("attention_factor", "mscale", "mscale_all_dim") if rp.get(k) is not None}
    return RopeConfig(
        theta=float(rp.get("rope_theta", getattr(hf, "rope_theta", 10000.0))), kind=kind, factor=float(factor),
        low_freq_factor=float(rp.get("low_freq_factor", 1.0)), high_freq_factor=float(rp.get("high_freq_factor", 4.0)),
        original_max_position=int(original), max_position=int(max_pos),
        beta_fast=float(rp.get("beta_fast") or 32), beta_slow=float(rp.get("beta_slow") or 1),
        truncate=bool(rp.get("truncate", True)), short_factor=tuple(rp.get("short_factor") or ()),
        long_factor=tuple(rp.get("long_factor") or ()), **opt)


def decoder_config(hf) -> DecoderConfig:
    """Our config from a transformers PretrainedConfig; every family difference becomes a switch."""
    why = refusal(hf)
    if why:
        raise ModelLoadError(why)
    mt = hf.model_type
    rp = dict(getattr(hf, "rope_parameters", None) or {})
    if not rp:  # transformers < 5 style
        rp = dict(getattr(hf, "rope_scaling", None) or {})
        rp.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
    # rope_parameters may be keyed by layer type (Gemma 3: sliding layers have their own base, no scaling)
    by_type = "full_attention" in rp or "sliding_attention" in rp
    full = dict(rp.get("full_attention") or {}) if by_type else rp
    rope = _rope_config(full, hf)
    sliding_rope = _rope_config(dict(rp["sliding_attention"]), hf) if by_type and rp.get("sliding_attention") else None
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    partial = float(full.get("partial_rotary_factor", getattr(hf, "partial_rotary_factor", None) or 1.0))
    # transformers' configs already drop the window when it is off (Qwen2/3: use_sliding_window) and
    # name each layer's kind in layer_types (Qwen2/3: sliding from max_window_layers on; Gemma: alternating)
    window = getattr(hf, "sliding_window", None)
    types = getattr(hf, "layer_types", None)
    sliding = tuple(t == "sliding_attention" for t in types) if types and window else None
    if sliding is not None and not any(sliding):
        window, sliding = None, None
    gemma = mt in ("gemma2", "gemma3_text")
    bias = bool(getattr(hf, "attention_bias", False))
    return DecoderConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads,
        n_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim, max_position=hf.max_position_embeddings, rms_norm_eps=hf.rms_norm_eps,
        rope=rope, qkv_bias=mt == "qwen2" or bias, o_bias=bias and mt != "qwen2",
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        sliding_window=window, model_type=mt, sliding_layers=sliding,
        sliding_rope=sliding_rope if sliding_rope != rope else None,
        rotary_dim=int(head_dim * partial) if partial != 1.0 else None,
        qk_norm=mt in ("qwen3", "gemma3_text"), norm_plus_one=gemma, sandwich_norm=gemma,
        embed_scale=hf.hidden_size ** 0.5 if gemma else None,
        activation=ACTIVATIONS[getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")],
        attn_scale=hf.query_pre_attn_scalar ** -0.5 if gemma else None,
        attn_softcap=getattr(hf, "attn_logit_softcapping", None) if gemma else None,
        final_softcap=getattr(hf, "final_logit_softcapping", None) if gemma else None)


# Each stacked per-layer weight of DecoderWeights and the checkpoint tensors of one layer
# (`model.layers.{i}.` + part) it holds, concatenated along dim 0 in this order.
LAYER_PARTS = {
    "wqkv": tuple(f"self_attn.{p}_proj.weight" for p in "qkv"),
    "bqkv": tuple(f"self_attn.{p}_proj.bias" for p in "qkv"),
    "wo": ("self_attn.o_proj.weight",),
    "bo": ("self_attn.o_proj.bias",),
    "norm_in": ("input_layernorm.weight",),
    "norm_post": ("post_attention_layernorm.weight",),
    "w_gate_up": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "b_gate_up": ("mlp.gate_proj.bias", "mlp.up_proj.bias"),
    "w_down": ("mlp.down_proj.weight",),
    "b_down": ("mlp.down_proj.bias",),
}
QK_NORM_PARTS = {"q_norm": ("self_attn.q_norm.weight",), "k_norm": ("self_attn.k_norm.weight",)}
# Gemma's four norms: before attention, on its output, before the MLP, on its output.
SANDWICH_PARTS = {"norm_post": ("pre_feedforward_layernorm.weight",),
                  "norm_attn_out": ("post_attention_layernorm.weight",),
                  "norm_mlp_out": ("post_feedforward_layernorm.weight",)}


def layer_parts(cfg: DecoderConfig) -> dict[str, tuple[str, ...]]:
    """The stacked weights this family has and the checkpoint tensors each holds."""
    parts = dict(LAYER_PARTS)
    if cfg.qk_norm:
        parts.update(QK_NORM_PARTS)
    if cfg.sandwich_norm:
        parts.update(SANDWICH_PARTS)
    return parts


FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
         "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def unfused(get: Callable, cfg: DecoderConfig) -> Callable:
    """Phi-3/4 checkpoints fuse q/k/v into qkv_proj and gate/up into gate_up_proj: read those as the separate
    tensors (rows [q; k; v] and [gate; up]), so that stacking, sharding and quantizing see one layout."""
    q, kv, f = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.intermediate_size
    rows = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv),
            "gate_proj": (0, f), "up_proj": (f, 2 * f)}

    def read(name: str):
        view = get(name)
        if view is not None:
            return view
        prefix, _, rest = name.rpartition(".")[0].rpartition(".")
        if rest not in FUSED:
            return None
        fused = get(f"{prefix}.{FUSED[rest]}.{name.rpartition('.')[2]}")
        if fused is None:
            return None
        a, b = rows[rest]
        return fused[a:b]

    return read
