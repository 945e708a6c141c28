"""Small synthetic checkpoints for fast tests: random Llama-family weights and a byte tokenizer.

They say nothing about acceptance rates of real models (docs/conventions.md#synthetic-pairs); they exercise every code path.
"""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 272  # 256 bytes + 16 special tokens


def byte_tokenizer():
    """A byte-level tokenizer with an EOS and a chat template, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|x{i}|>" for i in range(13)]
    for s in specials:
        vocab[s] = len(vocab)
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:2])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def hf_config(model_type: str = "qwen2", n_layers: int = 8, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
              **extra):
    from transformers import AutoConfig

    settings = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                    num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                    initializer_range=0.12, tie_word_embeddings=False, eos_token_id=VOCAB - 14,
                    bos_token_id=VOCAB - 15)
    return AutoConfig.for_model(model_type, **{**settings, **extra})


def save_checkpoint(folder: Path, config, seed: int, base_state: dict | None = None, noise: float = 0.0,
                    tokenizer=None, norm_noise: float = 0.0) -> Path:
    """A random-weight causal LM saved as a transformers checkpoint.

    With base_state, the weights are base_state + noise * N(0, 1) (a draft made from the base's own
    layers, so that it agrees with the base often enough to exercise acceptance). norm_noise adds
    norm_noise * N(0, 1) to every norm weight, which transformers initializes to constants (ones, or
    zeros for Gemma's 1 + w), so that a norm's weight really matters in a comparison.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if base_state is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.state_dict().items():
                src = base_state[name]
                p.copy_(src + noise * src.std() * torch.randn(src.shape, generator=g))
    if norm_noise and base_state is None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(norm_noise * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    (tokenizer or byte_tokenizer()).save_pretrained(folder)
    return folder


def make_pair(root: Path, model_type: str = "qwen2", n_layers: int = 8, noise: float = 0.3, seed: int = 0,
              **extra) -> tuple[Path, Path]:
    """(base_dir, draft_dir): a base and a same-shape draft = base + noise."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(model_type, n_layers=n_layers, **extra)
    base = save_checkpoint(root / "base", cfg, seed)
    state = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    draft = save_checkpoint(root / "draft", cfg, seed + 1, base_state=state, noise=noise)
    return base, draft


def untranslated(strings) -> list[str]:
    """English phrases of the Japanese translation table (two words or more, a template's fixed parts
    included) that are still in `strings`: what a screen in Japanese left in English."""
    import re

    from easyspec.core.i18n import table

    phrases = {part.strip() for key in table("ja")["ui"] for part in re.split(r"\{\w+\}", key)}
    phrases = {p for p in phrases if " " in p and len(p) >= 6}
    return sorted({p for p in phrases for s in strings if p in s})
