"""Loading a base and a draft model into the project's own decoder, with their tokenizer.

What it is: resolution of a Hugging Face model id, a local checkpoint folder or a named offline
pair to a folder; reading weights (safetensors directly, layer by layer into stacked buffers, so the
model is never held twice); the same-tokenizer check and the shared vocabulary; the end-of-sequence
ids. transformers stays the config/tokenizer loader.
What it is not: which families run and how their configs translate (`families.py`), the offline pair's
preparation (`offline_pair.py`) or the decoder (`decoder.py`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..engine.decoder import Decoder, DecoderConfig, DecoderWeights
from .families import ModelLoadError, decoder_config, layer_parts, unfused

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# End-of-turn tokens that stop generation when the vocabulary has them, beside the configured EOS.
KNOWN_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")


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
    get = unfused(_tensor_getter(folder), cfg)

    def read(name: str, part: str | None = None, source: Callable = get) -> torch.Tensor:
        view = source(name)
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

    # A tensor read from safetensors in its own dtype is a view of the file's memory map. The embedding is only
    # gathered by rows, so on the CPU it stays such a view (as transformers keeps it), through a map of its own:
    # only the rows read become resident. Everything else is copied out of `get`'s map (copy=True), which is
    # released after loading; a kept view would hold the whole file resident beside the copies.
    embed = read("model.embed_tokens.weight", source=unfused(_tensor_getter(folder), cfg)).to(dtype=dtype, device=device)
    tied = cfg.tie_word_embeddings or get("lm_head.weight") is None
    lm_head = embed if tied else read("lm_head.weight").to(dtype=dtype, device=device, copy=True)
    present = {"bqkv": cfg.qkv_bias, "bo": cfg.o_bias, "b_gate_up": cfg.mlp_bias, "b_down": cfg.mlp_bias}
    weights = DecoderWeights(
        embed=embed,
        **{name: stack(list(parts), bias=name in present) if present.get(name, True) else None
           for name, parts in layer_parts(cfg).items()},
        norm=read("model.norm.weight").to(dtype=dtype, device=device, copy=True),
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
