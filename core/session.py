"""An engine session: models loaded once per process, generations run one at a time.

What it is: the object front ends (CLI, dashboard, benchmarks) hold. It owns the tokenizer and the
loaded models, on one device or as rank 0 of G ranks (`runtime/ranks.py` starts the others), serialises
generations on the devices, resolves a run's settings into its plan once (`plan`, planning.py) and
turns that plan into the engine's record stream (`generate`). Stopping early is
closing the stream: the run ends after the current round and the session is ready for the next.
What it is not: the decoding loop (`engine/loop.py`) or the multi-device protocol (`runtime/parallel.py`).
"""
from __future__ import annotations

import datetime
import functools
import logging
import re
import threading
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch

from .engine.decoder import DecoderConfig
from .engine.loop import Stopping, generate
from .engine.records import RoundRecord, RunHeader
from .models.loading import PairSource, load_draft, load_pair, parse_device, parse_dtype, resolve_pair
from .models.text import encode_prompt
from .planning import check_prompt, plan_run
from .settings import RunPlan, SettingsError, SpecConfig, check_draft_dtype, check_finite, name
from .tuner.cache import load_tuning, pair_key, save_tuning
from .tuner.tune import tune_steps
from .tuner.types import TuneConfig, TuneResult

logger = logging.getLogger(__name__)


class DeviceMemoryError(RuntimeError):
    """A run needed more device memory than there is (torch's out-of-memory error, or the operator's
    memory budget); the session stays usable for smaller runs."""


def out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error (CUDA), or the CPU allocator's refusal (a RuntimeError)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc))


def _first_line(exc: BaseException) -> str:
    """The gist of an allocator message, without the C++ assertion prefix."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"^\[enforce fail at [^\]]*\] err == 0\. ", "", text)[:300]


def kv_cache_bytes(cfg: DecoderConfig, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of one KV cache for `tokens` positions: K and V, [L, Hkv, S, hd] each."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * tokens * cfg.head_dim * torch.empty((), dtype=dtype).element_size()


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
    draft_dtype: str | None = None  # the draft's precision (quantize.DRAFT_DTYPES); None without a draft


class Session:
    """Use as a context manager (or call close()) so that worker ranks are shut down."""

    def __init__(self, source: PairSource, dtype: str = "float32", device: str = "cpu", devices: int = 1,
                 timeout_s: float = 60.0, memory_budget_mb: float | None = None, draft_dtype: str | None = None):
        parse_dtype(dtype)
        self.draft_dtype = check_draft_dtype(draft_dtype or dtype)
        if devices < 1:
            raise ValueError(f"--devices must be >= 1; got {devices}")
        if devices == 1:
            parse_device(device)
        check_finite(timeout_s, "--timeout")
        if memory_budget_mb is not None:
            check_finite(memory_budget_mb, "--memory-budget-mb")
        if memory_budget_mb is not None and memory_budget_mb <= 0:
            raise ValueError(f"--memory-budget-mb must be > 0; got {memory_budget_mb}")
        self.source, self.dtype, self.device, self.devices, self.timeout_s = source, dtype, device, devices, timeout_s
        self.memory_budget_mb = memory_budget_mb
        self._lock = threading.Lock()
        self._fp32_lock = threading.Lock()
        self._fp32 = None
        self.ranks = None
        self._start()
        self._closed = threading.Event()
        self._keepalive = None
        if devices > 1:
            self._keepalive = threading.Thread(target=self._keep_ranks_alive, name="easyspec-keepalive", daemon=True)
            self._keepalive.start()

    @classmethod
    def open(cls, pair: str | None = None, base: str | None = None, draft: str | None = None,
             dtype: str = "float32", device: str = "cpu", with_draft: bool = True, devices: int = 1,
             timeout_s: float = 60.0, memory_budget_mb: float | None = None,
             draft_dtype: str | None = None) -> "Session":
        return cls(resolve_pair(base, draft, pair, with_draft), dtype, device, devices, timeout_s, memory_budget_mb,
                   draft_dtype)

    def _start(self) -> None:
        if self.devices == 1:
            self.pair = load_pair(self.source, self.dtype, self.device, draft_dtype=self.draft_dtype)
            self.base = self.pair.base.decoder
            self.draft = self.pair.draft.decoder if self.pair.draft else None
            self.runtime = None
        else:
            from .runtime.ranks import Ranks

            self.ranks = Ranks.start(self.source, self.dtype, self.device, self.devices, self.timeout_s,
                                     self.draft_dtype)
            self.pair, leader = self.ranks.pair, self.ranks.leader
            self.base, self.draft, self.runtime = leader.base, leader.draft, leader
        self.tokenizer = self.pair.tokenizer
        self._drafts = {self.draft_dtype: self.draft} if self.draft is not None else {}
        self.info = SessionInfo(
            base=self.source.base_name, draft=self.source.draft_name, dtype=self.dtype, device=self.device,
            devices=self.devices, draft_layers=self.draft.cfg.n_layers if self.draft else None,
            base_layers=self.base.cfg.n_layers, context_window=self.base.cfg.max_position,
            draft_dtype=self.draft_dtype if self.draft else None)

    def draft_for(self, cfg: SpecConfig):
        """The draft decoder at the run's precision (cfg.draft_dtype, "" = the session's): another precision
        is loaded from the same checkpoint on first use and kept (one device only)."""
        precision = cfg.draft_dtype or self.draft_dtype
        if cfg.mode == "vanilla" or self.draft is None or precision in self._drafts:
            return self._drafts.get(precision, self.draft)
        assert self.devices == 1, "checked by Session.plan"
        self._drafts[precision] = load_draft(self.source.draft_dir, precision, self.base.device)
        return self._drafts[precision]

    def fp32_base(self):
        """The base in fp32 from the same weights, for classifying greedy differences (lossless.py); built on
        first use and kept. One device: the loaded base upcast (itself in an fp32 session). Several devices:
        rank 0 holds only its tensor-parallel shard, so a whole base is loaded here from the checkpoint
        folder (rounded to the session's dtype first); its forwards are local and need no other rank."""
        from .engine.lossless import fp32_copy, load_fp32_base

        with self._fp32_lock:
            if self._fp32 is None:
                whole = self.base if self.devices == 1 else None
                try:
                    self._fp32 = fp32_copy(whole) if whole else load_fp32_base(
                        self.source.base_dir, parse_dtype(self.dtype), self.base.device, self.base.cfg.vocab_size)
                except Exception as exc:  # an fp32 copy may not fit next to the session's models on the device
                    if not out_of_memory(exc) or self.base.device.type == "cpu":
                        raise
                    logger.warning("no device memory for an fp32 copy of the base: checking on the CPU")
                    torch.cuda.empty_cache()
                    cpu = torch.device("cpu")
                    self._fp32 = fp32_copy(whole, cpu) if whole else load_fp32_base(
                        self.source.base_dir, parse_dtype(self.dtype), cpu, self.base.cfg.vocab_size)
            return self._fp32

    def _keep_ranks_alive(self) -> None:
        """Between generations the followers wait for rank 0 inside a collective that times out after
        timeout_s: ping them every timeout_s / 3 while no generation holds the devices. A ping that
        fails means a rank died while idle: the ranks are stopped now and restarted by the next run."""
        while not self._closed.wait(self.timeout_s / 3):
            if not self._lock.acquire(blocking=False):
                continue  # a generation is running: its own collectives keep the followers busy
            try:
                if self.ranks is not None:
                    self.ranks.leader.ping()
            except Exception as exc:
                logger.warning("easyspec: %s", self.ranks.failure(exc))
                self.ranks.abort()
                self.ranks = None
            finally:
                self._lock.release()

    def close(self) -> None:
        self._closed.set()
        if self._keepalive is not None:
            self._keepalive.join()
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

    def plan(self, settings: SpecConfig, prompt_ids: Sequence[int]) -> RunPlan:
        """The run plan of `settings` for this prompt on this session's models, devices and tuning, resolved
        once per run (planning.py): SettingsError naming the field for settings it cannot run."""
        if settings.mode != "vanilla" and settings.draft_dtype not in ("", self.draft_dtype) and self.devices > 1:
            raise SettingsError("draft_dtype", f"draft precision {settings.draft_dtype} differs from the session's "
                                               f"{self.draft_dtype}: across devices every rank holds the draft, so "
                                               f"start the session with {name('draft_dtype')} {settings.draft_dtype}")
        needs_tuning = settings.mode != "vanilla" and self.draft is not None
        return plan_run(settings, prompt_ids, self.base.cfg, self.draft.cfg if self.draft else None, self.devices,
                        self.tuning() if needs_tuning else None)

    def run_header(self, settings: dict, prompt_ids: Sequence[int], **extra) -> RunHeader:
        """What a saved run of this session says about itself (records.save_run): its settings
        (`RunPlan.as_dict()`), the models, the prompt, the device and precisions, now; `extra` adds to
        what it carries beside (the CLI and the dashboard say where the run came from)."""
        i, now = self.info, datetime.datetime.now(datetime.timezone.utc)
        return RunHeader(settings=settings, base=i.base, draft=i.draft, prompt_ids=tuple(prompt_ids), device=i.device,
                         dtype=i.dtype, created=now.isoformat(timespec="seconds"),
                         extra={"devices": i.devices, "draft_dtype": i.draft_dtype, **extra})

    # -- tuning (tuner/) --------------------------------------------------------------------------
    @functools.cached_property
    def pair_key(self) -> str | None:
        """The tuning cache's key of this pair (its files do not change while the session holds them)."""
        if self.source.draft_dir is None:
            return None
        dtype = self.dtype if self.draft_dtype == self.dtype else f"{self.dtype} draft {self.draft_dtype}"
        return pair_key(self.source.base_dir, self.source.draft_dir, dtype)

    def tuning(self) -> TuneResult | None:
        key = self.pair_key
        return load_tuning(key) if key else None

    def tune(self, prompt_ids: Sequence[Sequence[int]], cfg: TuneConfig = TuneConfig(), progress=lambda _: None,
             save: bool = True) -> TuneResult:
        """Run the auto-tuner on this pair (one device) and cache the result for `--groups auto`."""
        for step in self.tune_steps(prompt_ids, cfg, save):
            if isinstance(step, TuneResult):
                return step
            progress(step)
        raise AssertionError("the tuner ended without a result")

    def tune_steps(self, prompt_ids: Sequence[Sequence[int]], cfg: TuneConfig = TuneConfig(),
                   save: bool = True) -> Iterator[str | TuneResult]:
        """The tuner as a stream of progress lines, then the (saved) result; holds the device lock."""
        if self.draft is None:
            raise ValueError("the tuner needs a draft model, and this session loaded none")
        if self.devices > 1:
            raise ValueError(f"run the tuner on one device with --max-group {self.devices}: acceptance does not "
                             f"depend on the device count, only on the plan")
        if not prompt_ids:
            raise ValueError("the tuner needs at least one calibration prompt")
        for ids in prompt_ids:
            check_prompt(ids, SpecConfig(max_new_tokens=cfg.max_new_tokens), self.base.cfg)
        return self._tune_stream(prompt_ids, cfg, save)

    def _tune_stream(self, prompt_ids, cfg: TuneConfig, save: bool) -> Iterator[str | TuneResult]:
        with self._lock:
            for step in tune_steps(self.base, self.draft, prompt_ids, cfg, Stopping(self.pair.eos_ids)):
                if isinstance(step, TuneResult):
                    step = replace(step, pair={"base": self.info.base, "draft": self.info.draft, "dtype": self.dtype})
                    if save:
                        save_tuning(step, self.pair_key)
                yield step

    def generate(self, plan: RunPlan) -> Iterator[RoundRecord]:
        """The record stream of one generation of a plan from `Session.plan`. The stream holds the device
        lock until it ends or is closed; closing it stops the run after the current round."""
        assert isinstance(plan, RunPlan), f"Session.generate runs a RunPlan from Session.plan, not {type(plan).__name__}"
        return self._stream(plan)

    def _check_budget(self, tokens: int, cfg: SpecConfig) -> None:
        """The operator's memory budget, enforced the way a device enforces its memory: by raising
        torch's out-of-memory error, so that a breach takes the same path as a real one."""
        if self.memory_budget_mb is None:
            return
        need = kv_cache_bytes(self.base.cfg, tokens, parse_dtype(self.dtype))
        if cfg.mode != "vanilla" and self.draft is not None:
            need += kv_cache_bytes(self.draft.cfg, tokens, self.draft.dtype)
        if need > self.memory_budget_mb * 1e6:
            raise torch.OutOfMemoryError(f"the KV caches for {tokens} tokens need {need / 1e6:.1f} MB, over the "
                                         f"memory budget of {self.memory_budget_mb:g} MB set at start")

    def _stream(self, plan: RunPlan) -> Iterator[RoundRecord]:
        cfg, prompt_ids = plan.settings, plan.prompt_ids
        stopping = Stopping(self.pair.eos_ids, cfg.stop_strings, self.decode)
        with self._lock:
            if self.ranks is not None and not self.ranks.alive():  # a rank died while idle
                logger.warning("easyspec: %s", self.ranks.failure(RuntimeError("exited while idle")))
                self.ranks.abort()
                self.ranks = None
            if self.devices > 1 and self.ranks is None:  # an earlier failure took the ranks down
                logger.info("easyspec: restarting the worker ranks")
                self._start()
            started = False
            try:
                self._check_budget(len(prompt_ids) + cfg.max_new_tokens, cfg)
                started = True
                draft = self.draft_for(cfg)
                yield from generate(self.base, draft, plan, stopping, self.runtime)
            except Exception as exc:
                if out_of_memory(exc):
                    if self.ranks is not None and started:  # the other ranks may wait in a collective
                        self.ranks.abort()
                        self.ranks = None
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    raise DeviceMemoryError(
                        f"out of device memory for a prompt of {len(prompt_ids)} tokens plus {cfg.max_new_tokens} "
                        f"new tokens ({_first_line(exc)}). Shorten the prompt or lower max new tokens; "
                        f"shorter runs still work.") from None
                if self.ranks is None:
                    raise
                reason = self.ranks.failure(exc)
                self.ranks.abort()
                self.ranks = None
                raise reason from None
