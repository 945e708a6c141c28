"""Prompt sets for pilots: the built-in sets in `assets/` and parsing of uploaded prompt files.

Built-in sets (written for this project): code, chat, math, summarisation, as JSON Lines with
one `{"prompt": ...}` object per line. Uploads: JSON Lines with the same shape, or CSV with a
`prompt` column. Every problem with a file (too large, binary, not UTF-8, wrong columns, empty)
is a `ValueError` whose message says what is wrong and where.
"""
from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

BUILTIN_SETS = ("code", "chat", "math", "summarisation")
MAX_FILE_BYTES = 1_000_000
MAX_PROMPTS = 1000
MAX_PROMPT_CHARS = 20_000


def builtin_prompts(name: str) -> list[str]:
    """The prompts of a built-in set (ValueError for an unknown name)."""
    if name not in BUILTIN_SETS:
        raise ValueError(f"unknown prompt set {name!r}: choose one of {', '.join(BUILTIN_SETS)}")
    data = resources.files("easyspec.assets").joinpath(f"prompts_{name}.jsonl").read_bytes()
    return parse_prompts(data, f"prompts_{name}.jsonl")


def _decode(data: bytes, name: str) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{name}: the file is {len(data) / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB")
    if b"\x00" in data[:8192]:
        raise ValueError(f"{name}: this looks like a binary file, not JSON Lines or CSV text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None


def _check_prompt(prompt, where: str) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: \"prompt\" must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}: the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{where}: the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt


def _jsonl(text: str, name: str) -> list[str]:
    prompts = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} line {n}: not valid JSON ({exc.msg}); each line must be an object "
                             f"like {{\"prompt\": \"...\"}}") from None
        if not isinstance(obj, dict) or "prompt" not in obj:
            raise ValueError(f"{name} line {n}: expected an object with a \"prompt\" key, like "
                             f"{{\"prompt\": \"...\"}}")
        prompts.append(_check_prompt(obj["prompt"], f"{name} line {n}"))
    return prompts


def _csv(text: str, name: str) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise ValueError(f"{name}: not valid CSV ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "prompt" not in header:
        found = ", ".join(repr(h) for h in rows[0][:8]) or "none"
        raise ValueError(f"{name}: no \"prompt\" column in the header row (columns found: {found})")
    col = header.index("prompt")
    prompts = []
    for n, row in enumerate(rows[1:], start=2):
        if col >= len(row):
            raise ValueError(f"{name} row {n}: it has {len(row)} columns, the \"prompt\" column is number {col + 1}")
        prompts.append(_check_prompt(row[col], f"{name} row {n}"))
    return prompts


def parse_prompts(data: bytes, name: str = "upload") -> list[str]:
    """Prompts from JSON Lines or CSV bytes; the format is picked from the name, else from the content."""
    text = _decode(data, name)
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        prompts = _jsonl(text, name)
    elif suffix == ".csv":
        prompts = _csv(text, name)
    elif suffix in ("", ".txt"):
        prompts = _jsonl(text, name) if text.lstrip().startswith("{") else _csv(text, name)
    else:
        raise ValueError(f"{name}: unknown file type {suffix!r}; upload JSON Lines (.jsonl) or CSV (.csv)")
    if not prompts:
        raise ValueError(f"{name}: no prompts found (the file is empty)")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"{name}: {len(prompts)} prompts; the limit is {MAX_PROMPTS}")
    return prompts


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a file on disk (an upload the dashboard saved, or a path given to `easyspec bench`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path.name}: the file is {size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB")
    return parse_prompts(path.read_bytes(), path.name)
