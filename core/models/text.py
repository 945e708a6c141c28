"""Text in and out: prompt encoding (optionally through the chat template) and streaming detokenization.

The user's text is always tokenized as plain text: a control token typed into a prompt (`<|im_end|>`,
`<|im_start|>`, ...) becomes the ordinary tokens of its characters, so it cannot end the user's
turn or open a new one. Only the chat template's own markup becomes special tokens.
What it is not: a tokenizer (it wraps the model's own) or the stop-string rule (`engine.Stopping`).
"""
from __future__ import annotations

import re
from typing import Sequence

_SLOT = "\ue000easyspec-prompt\ue000"  # a private-use marker where the template puts the user's text


def _plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with special tokens off: their spellings are just characters here."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _render(tokenizer, content: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def _template_parts(tokenizer, prompt: str) -> tuple[str, str, str]:
    """(template text before the user's text, the user's text as the template writes it, template text after)."""
    shell = _render(tokenizer, _SLOT)
    if shell.count(_SLOT) != 1:
        raise ValueError("this tokenizer's chat template does not write the user's text exactly once; "
                         "turn the chat template off")
    before, after = shell.split(_SLOT)
    full = _render(tokenizer, prompt)
    if not (full.startswith(before) and full.endswith(after) and len(full) >= len(before) + len(after)):
        raise ValueError("this tokenizer's chat template changes around the user's text; turn the chat template off")
    return before, full[len(before):len(full) - len(after)], after


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    """The template's special tokens where the template wrote them, every other character as plain text.

    Cutting the rendered text at the template's own special tokens, and tokenizing the pieces between
    them, is what the tokenizer itself does with the whole rendered text; so a prompt without
    control-token spellings gets exactly the ids of `apply_chat_template(..., tokenize=True)`.
    """
    before, user, after = _template_parts(tokenizer, prompt)
    specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    cuts: list[tuple[int, int]] = []
    if specials:
        pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
        offset = len(before) + len(user)
        cuts = [m.span() for m in pattern.finditer(before)]
        cuts += [(offset + m.start(), offset + m.end()) for m in pattern.finditer(after)]
    text, ids, pos = before + user + after, [], 0
    for start, end in cuts:
        ids += _plain_ids(tokenizer, text[pos:start])
        ids.append(specials[text[start:end]])
        pos = end
    return ids + _plain_ids(tokenizer, text[pos:])


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of the prompt; with chat, the tokenizer's chat template around one user turn.
    The user's text never becomes special tokens (see the module's note)."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: give some text to continue")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat was asked for but this tokenizer has no chat template")
        return _chat_ids(tokenizer, prompt)
    return list(tokenizer(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"])


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
