"""Loading a base and a draft model into the project's own decoder, with their tokenizer.

What it is: resolution of a Hugging Face model id, a local checkpoint folder or a named offline
pair to a folder; translation of a transformers config into `DecoderConfig`; reading weights
(safetensors directly, layer by layer into stacked buffers, so the model is never held twice);
the same-tokenizer check; the end-of-sequence ids. transformers stays the config/tokenizer loader.
What it is not: the offline pair's preparation (`offline_pair.py`) or the decoder (`decoder.py`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..engine.decoder import ROPE_KINDS, Decoder, DecoderConfig, DecoderWeights, RopeConfig

logger = logging.getLogger(__name__)
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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# End-of-turn tokens that stop generation when the vocabulary has them, beside the configured EOS.
KNOWN_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    name: str
    folder: Path
    decoder: Decoder


@dataclass
class ModelPair:
    """A base model, an optional draft model sharing its tokenizer, and the tokenizer."""

    base: LoadedModel
    draft: LoadedModel | None
    tokenizer: object  # a transformers PreTrainedTokenizer(Fast)
    eos_ids: frozenset[int]


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: choose cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_folder(id_or_dir: str) -> Path:
    """A local folder as it is; otherwise a Hugging Face model id, from the hub or its local cache."""
    path = Path(id_or_dir).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{id_or_dir}: not a checkpoint folder (it is a file)")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{id_or_dir}: no config.json here, so it is not a transformers checkpoint")
        return path
    if id_or_dir.startswith((".", "/", "~")) or id_or_dir.count("/") != 1:
        raise ModelLoadError(f"{id_or_dir}: no such checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(id_or_dir, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                 "*.txt", "*.jinja"]))
    except Exception as exc:  # network, missing repo, offline without a cached copy
        raise ModelLoadError(f"{id_or_dir}: not a local folder and could not be fetched from the "
                             f"Hugging Face hub ({type(exc).__name__}: {exc})") from None


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


def _open_safetensors(path: Path):
    """safe_open, with a damaged file (truncated by a full disk or an interrupted copy, or overwritten)
    reported as such, with what to do about it."""
    from safetensors import safe_open

    try:
        return safe_open(path, "pt")
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: weight file missing (named by the checkpoint's index); copy the "
                             f"checkpoint again") from None
    except Exception as exc:  # SafetensorError: bad header, file shorter than its header says
        raise ModelLoadError(
            f"{path}: corrupt or partial weight file ({exc}). If it is in the easyspec cache, run "
            f"`easyspec cache clear` and start again to rebuild it; otherwise copy the checkpoint again") from None


def _tensor_getter(folder: Path) -> Callable[[str], object | None]:
    """name -> a sliceable view of the tensor (or None when absent), reading safetensors lazily:
    `view[a:b]` or `view[:, a:b]` reads only that part, so a rank loads only its shard."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index}: corrupt index ({type(exc).__name__}: {exc}); copy the checkpoint "
                                 f"again, or for the easyspec cache run `easyspec cache clear`") from None
        files = {name: folder / f for name, f in weight_map.items()}
    else:
        files = {}
        for f in sorted(folder.glob("*.safetensors")):
            with _open_safetensors(f) as h:
                files.update({name: f for name in h.keys()})
    if not files:
        return _transformers_getter(folder)
    handles: dict[Path, object] = {}

    def get(name: str):
        f = files.get(name)
        if f is None:
            return None
        if f not in handles:
            handles[f] = _open_safetensors(f)
        return handles[f].get_slice(name)

    return get


def _transformers_getter(folder: Path) -> Callable[[str], torch.Tensor | None]:
    """Fallback for checkpoints without safetensors (pytorch_model.bin): load through transformers."""
    from transformers import AutoModelForCausalLM

    try:
        state = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    except Exception as exc:
        raise ModelLoadError(f"{folder}: no loadable weights (no *.safetensors, and transformers "
                             f"could not load it: {type(exc).__name__}: {exc})") from None
    return state.get


@dataclass(frozen=True)
class Shard:
    """Tensor-parallel slice of a model for one rank (Megatron layout, applied at load time):
    q/k/v and gate/up split by output rows (whole heads), o and down split by input columns.
    With fewer KV heads than ranks, KV heads are replicated (as vLLM does)."""

    rank: int
    world: int

    def check(self, cfg: DecoderConfig) -> None:
        g = self.world
        if cfg.n_heads % g or cfg.intermediate_size % g or (cfg.n_kv_heads % g and g % cfg.n_kv_heads):
            raise ValueError(f"the base model ({cfg.n_heads} query heads, {cfg.n_kv_heads} KV heads, MLP width "
                             f"{cfg.intermediate_size}) cannot be split evenly over {g} devices")

    def local(self, cfg: DecoderConfig) -> DecoderConfig:
        from dataclasses import replace

        return replace(cfg, n_heads=cfg.n_heads // self.world, n_kv_heads=max(1, cfg.n_kv_heads // self.world),
                       intermediate_size=cfg.intermediate_size // self.world)

    def rows(self, part: str, cfg: DecoderConfig) -> slice:
        """Rows of a q/k/v/gate/up weight (or bias) that this rank holds."""
        hd, r, g = cfg.head_dim, self.rank, self.world
        if part.startswith("self_attn.q_proj"):
            n = cfg.n_heads // g
            return slice(r * n * hd, (r + 1) * n * hd)
        if part.startswith(("self_attn.k_proj", "self_attn.v_proj")):
            n = max(1, cfg.n_kv_heads // g)
            first = r * n if cfg.n_kv_heads >= g else r * cfg.n_kv_heads // g  # replicated KV heads
            return slice(first * hd, (first + n) * hd)
        f = cfg.intermediate_size // g
        return slice(r * f, (r + 1) * f)

    def cols(self, part: str, cfg: DecoderConfig) -> slice:
        """Input columns of an o/down weight that this rank holds."""
        width = cfg.n_heads * cfg.head_dim if part.startswith("self_attn.o_proj") else cfg.intermediate_size
        n = width // self.world
        return slice(self.rank * n, (self.rank + 1) * n)


ROW_SPLIT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
COL_SPLIT = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
ROOT_BIAS = ("self_attn.o_proj.bias", "mlp.down_proj.bias")  # added once, after the all-reduce


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


def _unfused(get: Callable, cfg: DecoderConfig) -> Callable:
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


def read_config(folder: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"{folder}: config.json could not be read as a transformers config "
                             f"({exc})") from None


def load_decoder(folder: Path, dtype: torch.dtype, device: torch.device, shard: Shard | None = None,
                 vocab: int | None = None) -> Decoder:
    """Our decoder with the checkpoint's weights; with `shard`, only that rank's tensor-parallel part
    (the embedding, norms and LM head stay whole on every rank); with `vocab`, logits for the first
    `vocab` ids only (a pair's shared vocabulary, see `shared_vocab`)."""
    from dataclasses import replace

    cfg = decoder_config(read_config(folder))
    if vocab is not None and vocab != cfg.vocab_size:
        assert vocab < cfg.vocab_size, (vocab, cfg.vocab_size)
        cfg = replace(cfg, vocab_size=vocab)
    if shard is not None:
        shard.check(cfg)
    get = _unfused(_tensor_getter(folder), cfg)

    def read(name: str, part: str | None = None) -> torch.Tensor:
        view = get(name)
        if view is None:
            raise ModelLoadError(f"{folder}: weight {name} is missing: not a {cfg.model_type} causal LM checkpoint")
        if shard is None or part is None:
            return view[:]
        if part.startswith(ROW_SPLIT):
            return view[shard.rows(part, cfg)]
        if part in COL_SPLIT:
            return view[:, shard.cols(part, cfg)]
        if part in ROOT_BIAS and shard.rank != 0:
            return torch.zeros_like(view[:])
        return view[:]

    def stack(parts: list[str], bias: bool = False) -> torch.Tensor | None:
        """Stack per-layer tensors (concatenated along dim 0 when several parts) as [L, ...]."""
        if bias and get(f"model.layers.0.{parts[0]}") is None:
            return None
        out = None
        for i in range(cfg.n_layers):
            t = torch.cat([read(f"model.layers.{i}.{p}", p) for p in parts], dim=0)
            if out is None:
                out = torch.empty((cfg.n_layers, *t.shape), dtype=dtype, device=device)
            out[i] = t
        return out

    embed = read("model.embed_tokens.weight").to(dtype=dtype, device=device)
    tied = cfg.tie_word_embeddings or get("lm_head.weight") is None
    lm_head = embed if tied else read("lm_head.weight").to(dtype=dtype, device=device)
    present = {"bqkv": cfg.qkv_bias, "bo": cfg.o_bias, "b_gate_up": cfg.mlp_bias, "b_down": cfg.mlp_bias}
    weights = DecoderWeights(
        embed=embed,
        **{name: stack(list(parts), bias=name in present) if present.get(name, True) else None
           for name, parts in layer_parts(cfg).items()},
        norm=read("model.norm.weight").to(dtype=dtype, device=device),
        lm_head=lm_head if lm_head.shape[0] == cfg.vocab_size else lm_head[: cfg.vocab_size],  # tied: one tensor
    )
    return Decoder(cfg if shard is None else shard.local(cfg), weights)


def load_draft(folder: Path, draft_dtype: str, device: torch.device, vocab: int | None = None) -> Decoder:
    """The draft at its own precision (quantize.DRAFT_DTYPES): float32/bfloat16 as loaded; int8/int4 loaded
    in fp32 and weight-only quantized (from the quantized cache beside the checkpoint when it has it)."""
    from .quantize import quantize_decoder
    from ..settings import FLOAT_DTYPES, check_draft_dtype

    check_draft_dtype(draft_dtype)
    if draft_dtype in FLOAT_DTYPES:
        return load_decoder(folder, DTYPES[draft_dtype], device, vocab=vocab)
    # the quantized cache holds the whole LM head: a draft cut to a shared vocabulary is quantized afresh
    return quantize_decoder(load_decoder(folder, torch.float32, device, vocab=vocab), draft_dtype,
                            folder if vocab is None else None)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"{folder}: tokenizer could not be loaded ({exc})") from None


def check_same_tokenizer(base_tok, draft_tok, base_name: str, draft_name: str) -> None:
    """Refuse a draft whose token-to-id map differs from the base's, naming the first id where they differ
    (embedding sizes may differ: see shared_vocab)."""
    bv, dv = base_tok.get_vocab(), draft_tok.get_vocab()
    if bv != dv:
        b_ids, d_ids = {i: t for t, i in bv.items()}, {i: t for t, i in dv.items()}
        first = min(i for i in set(b_ids) | set(d_ids) if b_ids.get(i) != d_ids.get(i))
        raise ModelLoadError(
            f"the draft {draft_name} does not share the base {base_name}'s tokenizer ({len(dv)} vs {len(bv)} "
            f"tokens; first difference at id {first}: base {b_ids.get(first)!r}, draft {d_ids.get(first)!r}): "
            f"speculative decoding needs the same token-to-id map")


def shared_vocab(base_vocab: int, draft_vocab: int, tokenizer, draft_name: str) -> int | None:
    """The ids both models score when their embedding tables differ in size (padded differently past the
    tokenizer, e.g. Qwen2.5 0.5B/7B): the smaller table, which must still hold every token of the shared
    tokenizer. None when the sizes agree."""
    if base_vocab == draft_vocab:
        return None
    shared = min(base_vocab, draft_vocab)
    if len(tokenizer) > shared:
        raise ModelLoadError(
            f"the draft {draft_name} has {draft_vocab} embedding rows and the base {base_vocab}, but their shared "
            f"tokenizer has {len(tokenizer)} tokens: the smaller model cannot score all of them")
    logger.info("base and draft embedding tables differ (%d vs %d rows): logits aligned to the first %d ids",
                base_vocab, draft_vocab, shared)
    return shared


def eos_ids(folder: Path, tokenizer) -> frozenset[int]:
    """Every id that ends generation: the config's and generation config's EOS, the tokenizer's,
    and known end-of-turn tokens present in the vocabulary (Qwen: <|im_end|> and <|endoftext|>)."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in KNOWN_END_TOKENS if t in vocab)
    return frozenset(ids)


@dataclass(frozen=True)
class PairSource:
    """Where a pair's checkpoints are: names for display and resolved local folders."""

    base_name: str
    base_dir: Path
    draft_name: str | None
    draft_dir: Path | None


def resolve_pair(base: str | None = None, draft: str | None = None, pair: str | None = None,
                 with_draft: bool = True) -> PairSource:
    """Folders of a named offline pair (prepared on first use) or of ids/folders given by the user."""
    if pair is not None:
        from .offline_pair import ensure_offline_pair

        draft_dir, base_dir = ensure_offline_pair(pair)
        return PairSource(f"{pair}/base", base_dir, f"{pair}/draft" if with_draft else None,
                          draft_dir if with_draft else None)
    if base is None or (with_draft and draft is None):
        raise ValueError("give --pair NAME, or both --base and --draft")
    if not with_draft:
        return PairSource(base, resolve_folder(base), None, None)
    return PairSource(base, resolve_folder(base), draft, resolve_folder(draft))


def load_pair(source: PairSource, dtype: str = "float32", device: str = "cpu", shard: Shard | None = None,
              torch_device: torch.device | None = None, draft_dtype: str | None = None) -> ModelPair:
    """Tokenizer (checked to be shared), draft (whole, at `draft_dtype`, default `dtype`) and base (whole,
    or this rank's shard)."""
    torch_dtype = parse_dtype(dtype)
    torch_device = torch_device or parse_device(device)
    tokenizer = load_tokenizer(source.base_dir)
    loaded_draft, vocab = None, None
    if source.draft_dir is not None:
        check_same_tokenizer(tokenizer, load_tokenizer(source.draft_dir), source.base_name, source.draft_name)
        base_cfg, draft_cfg = (decoder_config(read_config(d)) for d in (source.base_dir, source.draft_dir))
        vocab = shared_vocab(base_cfg.vocab_size, draft_cfg.vocab_size, tokenizer, source.draft_name)
        loaded_draft = LoadedModel(source.draft_name, source.draft_dir,
                                   load_draft(source.draft_dir, draft_dtype or dtype, torch_device, vocab))
    loaded_base = LoadedModel(source.base_name, source.base_dir,
                              load_decoder(source.base_dir, torch_dtype, torch_device, shard, vocab))
    return ModelPair(loaded_base, loaded_draft, tokenizer, eos_ids(source.base_dir, tokenizer))
