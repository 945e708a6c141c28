"""Loading a base and a draft model into the project's own decoder, with their tokenizer.

What it is: resolution of a Hugging Face model id, a local checkpoint folder or a named offline
pair to a folder; translation of a transformers config into `DecoderConfig`; reading weights
(safetensors directly, layer by layer into stacked buffers, so the model is never held twice);
the same-tokenizer check; the end-of-sequence ids. transformers stays the config/tokenizer loader.
What it is not: the offline pair's preparation (`offline_pair.py`) or the decoder (`decoder.py`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .decoder import Decoder, DecoderConfig, DecoderWeights, RopeConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
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


def decoder_config(hf) -> DecoderConfig:
    """Our config from a transformers PretrainedConfig of the Llama family."""
    if hf.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"model type {hf.model_type!r} is not supported: the decoder covers "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama 2/3, Qwen2/2.5, Mistral, SmolLM)")
    rp = dict(getattr(hf, "rope_parameters", None) or {})
    if not rp:  # transformers < 5 style
        rp = dict(getattr(hf, "rope_scaling", None) or {})
        rp.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
    kind = rp.get("rope_type", rp.get("type", "default"))
    rope = RopeConfig(
        theta=float(rp.get("rope_theta", 10000.0)), kind=kind, factor=float(rp.get("factor", 1.0)),
        low_freq_factor=float(rp.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rp.get("high_freq_factor", 4.0)),
        original_max_position=int(rp.get("original_max_position_embeddings", 8192)))
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    qwen = hf.model_type == "qwen2"
    window = getattr(hf, "sliding_window", None)
    if qwen and not getattr(hf, "use_sliding_window", False):
        window = None
    return DecoderConfig(
        vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
        n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads,
        n_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim, max_position=hf.max_position_embeddings, rms_norm_eps=hf.rms_norm_eps,
        rope=rope, qkv_bias=qwen or bool(getattr(hf, "attention_bias", False)),
        o_bias=bool(getattr(hf, "attention_bias", False)) and not qwen,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        sliding_window=window, model_type=hf.model_type)


def _tensor_getter(folder: Path) -> Callable[[str], torch.Tensor | None]:
    """name -> tensor (or None when absent), reading safetensors lazily, one tensor at a time."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: folder / f for name, f in weight_map.items()}
    else:
        files = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                files.update({name: f for name in h.keys()})
    if not files:
        return _transformers_getter(folder)
    handles: dict[Path, object] = {}

    def get(name: str) -> torch.Tensor | None:
        f = files.get(name)
        if f is None:
            return None
        if f not in handles:
            handles[f] = safe_open(f, "pt")
        return handles[f].get_tensor(name)

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


def load_decoder(folder: Path, dtype: torch.dtype, device: torch.device) -> Decoder:
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"{folder}: config.json could not be read as a transformers config "
                             f"({exc})") from None
    cfg = decoder_config(hf)
    get = _tensor_getter(folder)

    def need(name: str) -> torch.Tensor:
        t = get(name)
        if t is None:
            raise ModelLoadError(f"{folder}: weight {name} is missing: not a {cfg.model_type} causal LM checkpoint")
        return t

    def stack(parts: list[str], bias: bool = False) -> torch.Tensor | None:
        """Stack per-layer tensors (concatenated along dim 0 when several parts) as [L, ...]."""
        if bias and get(f"model.layers.0.{parts[0]}") is None:
            return None
        out = None
        for i in range(cfg.n_layers):
            t = torch.cat([need(f"model.layers.{i}.{p}") for p in parts], dim=0)
            if out is None:
                out = torch.empty((cfg.n_layers, *t.shape), dtype=dtype, device=device)
            out[i] = t
        return out

    attn = [f"self_attn.{p}_proj" for p in "qkv"]
    mlp = ["mlp.gate_proj", "mlp.up_proj"]
    embed = need("model.embed_tokens.weight").to(dtype=dtype, device=device)
    lm_head = get("lm_head.weight")
    weights = DecoderWeights(
        embed=embed,
        wqkv=stack([f"{p}.weight" for p in attn]),
        bqkv=stack([f"{p}.bias" for p in attn], bias=True) if cfg.qkv_bias else None,
        wo=stack(["self_attn.o_proj.weight"]),
        bo=stack(["self_attn.o_proj.bias"], bias=True) if cfg.o_bias else None,
        norm_in=stack(["input_layernorm.weight"]),
        norm_post=stack(["post_attention_layernorm.weight"]),
        w_gate_up=stack([f"{p}.weight" for p in mlp]),
        b_gate_up=stack([f"{p}.bias" for p in mlp], bias=True) if cfg.mlp_bias else None,
        w_down=stack(["mlp.down_proj.weight"]),
        b_down=stack(["mlp.down_proj.bias"], bias=True) if cfg.mlp_bias else None,
        norm=need("model.norm.weight").to(dtype=dtype, device=device),
        lm_head=embed if lm_head is None or cfg.tie_word_embeddings else lm_head.to(dtype=dtype, device=device),
    )
    return Decoder(cfg, weights)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"{folder}: tokenizer could not be loaded ({exc})") from None


def check_same_tokenizer(base_tok, draft_tok, base_name: str, draft_name: str) -> None:
    """Refuse a draft whose token-to-id map differs from the base's (embedding sizes may differ)."""
    bv, dv = base_tok.get_vocab(), draft_tok.get_vocab()
    if bv != dv:
        diff = sorted(set(bv.items()) ^ set(dv.items()), key=lambda kv: kv[1])[:3]
        raise ModelLoadError(
            f"the draft {draft_name} does not share the base {base_name}'s tokenizer "
            f"({len(dv)} vs {len(bv)} tokens; first differences: {diff}): speculative decoding "
            f"needs the same token-to-id map")


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


def load_pair(base: str | None = None, draft: str | None = None, pair: str | None = None,
              dtype: str = "float32", device: str = "cpu", with_draft: bool = True) -> ModelPair:
    """Load a base and (when with_draft) a draft from ids/folders, or the named offline pair."""
    torch_dtype, torch_device = parse_dtype(dtype), parse_device(device)
    if pair is not None:
        from .offline_pair import ensure_offline_pair

        draft_dir, base_dir = ensure_offline_pair(pair)
        base_name, draft_name = f"{pair}/base", f"{pair}/draft"
    else:
        if base is None or (with_draft and draft is None):
            raise ValueError("give --pair NAME, or both --base and --draft")
        base_dir, base_name = resolve_folder(base), base
        draft_dir, draft_name = (resolve_folder(draft), draft) if with_draft else (None, None)
    tokenizer = load_tokenizer(base_dir)
    loaded_draft = None
    if with_draft:
        check_same_tokenizer(tokenizer, load_tokenizer(draft_dir), base_name, draft_name)
        loaded_draft = LoadedModel(draft_name, draft_dir, load_decoder(draft_dir, torch_dtype, torch_device))
    loaded_base = LoadedModel(base_name, base_dir, load_decoder(base_dir, torch_dtype, torch_device))
    return ModelPair(loaded_base, loaded_draft, tokenizer, eos_ids(base_dir, tokenizer))
