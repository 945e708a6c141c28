"""An engine session: models loaded once per process, generations run one at a time.

What it is: the object front ends (CLI, dashboard, benchmarks) hold. It owns the tokenizer and the
loaded models, on one device or as rank 0 of G ranks (`ranks.py` starts the others), serialises
generations on the devices, and turns a prompt into the engine's record stream. Stopping early is
closing the stream: the run ends after the current round and the session is ready for the next.
What it is not: the decoding loop (`engine.py`) or the multi-device protocol (`parallel.py`).
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from .engine import SpecConfig, Stopping, check_prompt, generate
from .grouping import layer_groups
from .loading import PairSource, load_pair, parse_device, parse_dtype, resolve_pair
from .records import RoundRecord
from .text import encode_prompt


@dataclass(frozen=True)
class SessionInfo:
    base: str
    draft: str | None
    dtype: str
    device: str
    devices: int
    draft_layers: int | None
    base_layers: int
    context_window: int


class Session:
    """Use as a context manager (or call close()) so that worker ranks are shut down."""

    def __init__(self, source: PairSource, dtype: str = "float32", device: str = "cpu", devices: int = 1,
                 timeout_s: float = 60.0):
        parse_dtype(dtype)
        if devices < 1:
            raise ValueError(f"--devices must be >= 1; got {devices}")
        if devices == 1:
            parse_device(device)
        self.source, self.dtype, self.device, self.devices, self.timeout_s = source, dtype, device, devices, timeout_s
        self._lock = threading.Lock()
        self.ranks = None
        self._start()

    @classmethod
    def open(cls, pair: str | None = None, base: str | None = None, draft: str | None = None,
             dtype: str = "float32", device: str = "cpu", with_draft: bool = True, devices: int = 1,
             timeout_s: float = 60.0) -> "Session":
        return cls(resolve_pair(base, draft, pair, with_draft), dtype, device, devices, timeout_s)

    def _start(self) -> None:
        if self.devices == 1:
            self.pair = load_pair(self.source, self.dtype, self.device)
            self.base = self.pair.base.decoder
            self.draft = self.pair.draft.decoder if self.pair.draft else None
            self.runtime = None
        else:
            from .ranks import Ranks

            self.ranks = Ranks.start(self.source, self.dtype, self.device, self.devices, self.timeout_s)
            self.pair, leader = self.ranks.pair, self.ranks.leader
            self.base, self.draft, self.runtime = leader.base, leader.draft, leader
        self.tokenizer = self.pair.tokenizer
        self.info = SessionInfo(
            base=self.source.base_name, draft=self.source.draft_name, dtype=self.dtype, device=self.device,
            devices=self.devices, draft_layers=self.draft.cfg.n_layers if self.draft else None,
            base_layers=self.base.cfg.n_layers, context_window=self.base.cfg.max_position)

    def close(self) -> None:
        if self.ranks is not None:
            self.ranks.stop()
            self.ranks = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encode(self, prompt: str, chat: bool) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, chat)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def validate(self, cfg: SpecConfig, prompt_ids: Sequence[int]) -> None:
        """Raise ValueError for settings this session cannot run, before any device work."""
        if cfg.mode != "vanilla" and self.draft is None:
            raise ValueError(f"mode {cfg.mode} needs a draft model, and this session loaded none")
        if cfg.mode == "easyspec":
            layer_groups(self.info.draft_layers, cfg.layer_parallel, cfg.sequential_head, cfg.sequential_tail)
            if cfg.layer_parallel > self.devices > 1:
                raise ValueError(f"--layer-parallel {cfg.layer_parallel} is more than the {self.devices} devices: "
                                 f"across devices each layer of a group runs on its own device, so N <= G")
        check_prompt(prompt_ids, cfg, self.base, self.draft)

    def generate(self, prompt_ids: Sequence[int], cfg: SpecConfig) -> Iterator[RoundRecord]:
        """Validate now (ValueError), then return the record stream of one generation. The stream holds
        the device lock until it ends or is closed; closing it stops the run after the current round."""
        self.validate(cfg, prompt_ids)
        return self._stream(list(prompt_ids), cfg)

    def _stream(self, prompt_ids: list[int], cfg: SpecConfig) -> Iterator[RoundRecord]:
        stopping = Stopping(self.pair.eos_ids, cfg.stop_strings, self.decode)
        with self._lock:
            if self.devices > 1 and self.ranks is None:  # an earlier failure took the ranks down
                print("easyspec: restarting the worker ranks", file=sys.stderr)
                self._start()
            if self.ranks is None:
                yield from generate(self.base, self.draft, prompt_ids, cfg, stopping, self.runtime)
                return
            try:
                yield from generate(self.base, self.draft, prompt_ids, cfg, stopping, self.runtime)
            except Exception as exc:
                reason = self.ranks.failure(exc)
                self.ranks.abort()
                self.ranks = None
                raise reason from None
