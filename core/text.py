"""Text in and out: prompt encoding (optionally through the chat template) and streaming detokenization."""
from __future__ import annotations

from typing import Sequence


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of the prompt; with chat, the tokenizer's chat template around one user turn."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: give some text to continue")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat was asked for but this tokenizer has no chat template")
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


class TextStream:
    """Turns a growing list of token ids into text increments, holding back incomplete characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters already returned

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, ids: Sequence[int], final: bool = False) -> str:
        """Add ids; return the new text that is safe to show (a partial UTF-8 sequence waits)."""
        self.ids.extend(ids)
        text = self.text()
        end = len(text)
        if not final:
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
        new, self.sent = text[self.sent:end], max(self.sent, end)
        return new
