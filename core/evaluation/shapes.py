"""Model shapes for the hardware model of decoding: numbers only, no weights.

What it is: `ModelShape` (the few numbers of a Llama-family config.json that set a decode step's
bytes and FLOPs), named presets copied from the models' published config.json files, `from_config`
for any config.json a user points at, `from_decoder` for a loaded pair, and `resolve` (a preset name
or a path). What it is not: a model loader (core/models/loading.py) or the cost model
(core/evaluation/projection.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    bytes_per_value: int = 2  # bf16 weights and KV cache
    sliding_window: int = 0  # local layers read at most this many cached tokens (0: every layer global)
    global_every: int = 1  # with a window: every global_every-th layer is global (Gemma 3: 6)

    def __post_init__(self) -> None:
        for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "bytes_per_value"):
            if getattr(self, f) < 1:
                raise ValueError(f"model {self.name}: {f} must be >= 1; got {getattr(self, f)}")

    # Bytes of one layer's weights (norms and biases are left out: under 0.1%).
    @property
    def attn_bytes(self) -> int:  # q and o: heads * head_dim; k and v: kv_heads * head_dim
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads) * self.bytes_per_value

    @property
    def mlp_bytes(self) -> int:  # gate, up, down
        return 3 * self.hidden * self.intermediate * self.bytes_per_value

    @property
    def head_bytes(self) -> int:  # the LM head (tied or not, it is read once per step)
        return self.vocab * self.hidden * self.bytes_per_value

    @property
    def weight_bytes(self) -> int:  # what one decode step reads (the embedding row aside)
        return self.layers * (self.attn_bytes + self.mlp_bytes) + self.head_bytes

    @property
    def kv_bytes_per_token(self) -> int:  # K and V of one cached token in one layer
        return 2 * self.kv_heads * self.head_dim * self.bytes_per_value

    def cached(self, context: int) -> float:
        """Mean cached tokens a layer reads at this context (local layers stop at the window)."""
        if not self.sliding_window:
            return float(context)
        local = min(context, self.sliding_window)
        return (context + (self.global_every - 1) * local) / self.global_every

    @property
    def params(self) -> int:
        return self.weight_bytes // self.bytes_per_value


def _p(name, layers, hidden, heads, kv_heads, intermediate, vocab, tied, head_dim=None, window=0, every=1):
    return ModelShape(name, layers, hidden, heads, kv_heads, head_dim or hidden // heads, intermediate, vocab,
                      tied, sliding_window=window, global_every=every)


# From each model's config.json on the Hugging Face Hub (num_hidden_layers, hidden_size,
# num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size,
# tie_word_embeddings; Gemma 3: text_config, sliding_window, one global layer in 6).
PRESETS = {s.name: s for s in (
    _p("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, False),  # meta-llama/Llama-2-7b-hf
    _p("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, False),  # meta-llama/Llama-2-70b-hf
    _p("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, False),  # meta-llama/Llama-3.1-8B-Instruct
    _p("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256, False),  # meta-llama/Llama-3.1-70B-Instruct
    _p("llama-3.3-70b", 80, 8192, 64, 8, 28672, 128256, False),  # meta-llama/Llama-3.3-70B-Instruct
    _p("llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, True, head_dim=64),  # meta-llama/Llama-3.2-1B-Instruct
    _p("qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064, False),  # Qwen/Qwen2.5-72B-Instruct
    _p("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, False),  # Qwen/Qwen2.5-7B-Instruct
    _p("qwen2.5-0.5b", 24, 896, 14, 2, 4864, 151936, True),  # Qwen/Qwen2.5-0.5B-Instruct
    _p("qwen2.5-coder-1.5b", 28, 1536, 12, 2, 8960, 151936, True),  # Qwen/Qwen2.5-Coder-1.5B-Instruct
    _p("qwen2.5-coder-0.5b", 24, 896, 14, 2, 4864, 151936, True),  # Qwen/Qwen2.5-Coder-0.5B-Instruct
    _p("qwen3-32b", 64, 5120, 64, 8, 25600, 151936, False, head_dim=128),  # Qwen/Qwen3-32B
    _p("qwen3-0.6b", 28, 1024, 16, 8, 3072, 151936, True, head_dim=128),  # Qwen/Qwen3-0.6B
    # google/gemma-3-27b-it
    _p("gemma-3-27b", 62, 5376, 32, 16, 21504, 262208, True, head_dim=128, window=1024, every=6),
    _p("gemma-3-1b", 26, 1152, 4, 1, 6912, 262144, True, head_dim=256, window=512, every=6),  # google/gemma-3-1b-it
)}
# The pairs issue 22 names: base -> drafts.
PAIRS = {"llama-3.1-70b": ("llama-3.1-8b",), "llama-3.3-70b": ("llama-3.2-1b",),
         "qwen2.5-72b": ("qwen2.5-7b", "qwen2.5-0.5b"), "qwen3-32b": ("qwen3-0.6b",), "gemma-3-27b": ("gemma-3-1b",),
         "qwen2.5-coder-1.5b": ("qwen2.5-coder-0.5b",)}


def from_config(path: str | Path, bytes_per_value: int = 2) -> ModelShape:
    """A shape from a Hugging Face config.json (a file, or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"{path}: no such config.json")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not a JSON config ({exc})") from None
    cfg = {**cfg, **cfg.get("text_config", {})}  # multimodal configs (Gemma 3) keep the decoder's there
    try:
        heads = int(cfg["num_attention_heads"])
        pattern = cfg.get("sliding_window_pattern") or (6 if cfg.get("model_type", "").startswith("gemma3") else 1)
        window = int(cfg.get("sliding_window") or 0) if cfg.get("use_sliding_window", True) and pattern > 1 else 0
        return ModelShape(p.parent.name or p.stem, int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), heads,
                          int(cfg.get("num_key_value_heads") or heads),
                          int(cfg.get("head_dim") or cfg["hidden_size"] // heads), int(cfg["intermediate_size"]),
                          int(cfg["vocab_size"]), bool(cfg.get("tie_word_embeddings", False)), bytes_per_value,
                          window, int(pattern) if window else 1)
    except KeyError as exc:
        raise ValueError(f"{p}: config.json has no {exc.args[0]}") from None


def from_decoder(cfg, name: str, bytes_per_value: int) -> ModelShape:
    """A loaded decoder's shape (core.engine.decoder.DecoderConfig)."""
    return ModelShape(name, cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                      cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings, bytes_per_value)


def resolve(name_or_path: str) -> ModelShape:
    """A preset by name (case-insensitive), else a config.json path."""
    key = name_or_path.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    if Path(name_or_path).exists() or name_or_path.endswith(".json") or "/" in name_or_path:
        return from_config(name_or_path)
    raise ValueError(f"unknown model {name_or_path!r}: a preset ({', '.join(PRESETS)}) or a config.json path")
