"""What the dashboard holds for its whole life: launch options, the one engine session, measured speed.

Built once at launch (models loaded once per process) and only read by the handlers afterwards;
per-user data lives in `gr.State` (`state.py`), never here.
"""
from __future__ import annotations

import ipaddress
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from easyspec.core.i18n import msg
from easyspec.core.runtime.device_stats import DeviceMonitor
from easyspec.core.exporter import Exporter
from easyspec.core.settings import (ON_LOW_ACCEPTANCE, check_draft_dtype, check_finite, default_layer_parallel,
                                    max_layer_parallel)
from easyspec.core.evaluation.pilot import Throughput, measure_throughput
from easyspec.core.engine.records import RoundRecord, RunHeader, load_run
from easyspec.core.session import Session

from .worker import on_thread

DEFAULT_PAIR = "qwen2.5-coder"
DEMO_RUNS = {  # label -> asset recorded from the offline pair with `easyspec generate --save-run`
    "speculative": "demo_run_speculative.jsonl",
    "easyspec every-round": "demo_run_easyspec.jsonl",
    "easyspec none": "demo_run_easyspec_none.jsonl",
}


@dataclass(frozen=True)
class AppOptions:
    host: str = "127.0.0.1"
    port: int = 7860
    devices: int = 1
    pair: str | None = None
    base: str | None = None
    draft: str | None = None
    dtype: str = "float32"
    draft_dtype: str | None = None  # the draft's own precision (core/models/quantize.py); None: the base's dtype
    device: str = "cpu"
    allow_custom_models: bool = False
    share: bool = False
    allow_remote: bool = False  # the operator's acknowledgement that other machines may connect
    auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (user, password) pairs; () = no login
    timeout_s: float = 60.0  # multi-device collective timeout: a rank that stops answering fails the run
    memory_budget_mb: float | None = None  # refuse runs whose KV caches would exceed this (as out-of-memory)
    probe: bool = True  # measure the session's speed at start (warm-up and pilot estimates)
    max_sessions: int = 200  # browser sessions whose latest outputs stay in memory (least recently used evicted)
    on_low_acceptance: str = "warn"  # the Generate screen's default: warn | fallback (monitor.FallbackGuard)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be between 1 and 65535; got {self.port}")
        if not (is_loopback(self.host) or self.allow_remote):
            raise ValueError(f"--host {self.host} would serve the app to other machines: add --allow-remote to "
                             f"confirm (and --auth USER:PASSWORD or --auth-file FILE to require a login)")
        if self.share and not self.allow_remote:
            raise ValueError("--share true publishes the app on a public gradio.live address: add --allow-remote "
                             "to confirm (and --auth USER:PASSWORD or --auth-file FILE to require a login)")
        check_finite(self.timeout_s, "--timeout")
        if self.draft_dtype is not None:
            check_draft_dtype(self.draft_dtype)
        if self.memory_budget_mb is not None:
            check_finite(self.memory_budget_mb, "--memory-budget-mb")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout must be > 0 seconds; got {self.timeout_s}")
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise ValueError(f"--memory-budget-mb must be > 0; got {self.memory_budget_mb}")
        if self.devices < 1:
            raise ValueError(f"--devices must be >= 1; got {self.devices}")
        if self.on_low_acceptance not in ON_LOW_ACCEPTANCE:
            raise ValueError(f"--on-low-acceptance {self.on_low_acceptance!r}: choose one of "
                             f"{', '.join(ON_LOW_ACCEPTANCE)}")
        if self.max_sessions < 1:
            raise ValueError(f"--max-sessions must be >= 1; got {self.max_sessions}")
        if (self.base or self.draft) and not self.allow_custom_models:
            raise ValueError("custom models (--base/--draft) are off: the operator enables them with "
                             "--allow-custom-models")
        if (self.base or self.draft) and self.pair:
            raise ValueError("give --pair NAME or --base/--draft, not both")
        if bool(self.base) != bool(self.draft):
            raise ValueError("give both --base and --draft")

    @property
    def pair_name(self) -> str | None:
        return None if self.base else (self.pair or DEFAULT_PAIR)

    @property
    def exposed(self) -> bool:
        return self.share or not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def parse_auth(pairs: list[str] | None = None, auth_file: str | None = None) -> tuple[tuple[str, str], ...]:
    """(user, password) pairs from `USER:PASSWORD` strings and/or a file with one such line each
    (blank lines and lines starting with # are skipped)."""
    items = [(f"--auth (number {i})", p) for i, p in enumerate(pairs or [], 1)]  # never echo a password
    if auth_file is not None:
        path = Path(auth_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"--auth-file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--auth-file {path}: cannot be read as UTF-8 text ({exc})") from None
        items += [(f"--auth-file {path} line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
                  if line.strip() and not line.lstrip().startswith("#")]
        if not any(where.startswith("--auth-file") for where, _ in items):
            raise ValueError(f"--auth-file {path}: no USER:PASSWORD lines in it")
    out = []
    for where, item in items:
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"{where}: expected USER:PASSWORD with a non-empty user and password")
        out.append((user.strip(), password))
    return tuple(out)


@dataclass(frozen=True)
class DemoRun:
    label: str
    header: RunHeader
    records: tuple[RoundRecord, ...]


def load_demo_runs() -> list[DemoRun]:
    """The recorded runs shipped in assets/ (missing or unreadable ones are skipped with a note)."""
    out = []
    for label, name in DEMO_RUNS.items():
        try:
            with resources.as_file(resources.files("easyspec.assets").joinpath(name)) as path:
                header, records = load_run(path)
            out.append(DemoRun(label, header, tuple(records)))
        except (OSError, ValueError) as exc:
            print(f"easyspec app: demo run {name} not loaded ({exc})", file=sys.stderr)
    return out


def draft_precision(info) -> str:
    """' (draft int8)' when the draft runs at another precision than the base (set with --draft-dtype)."""
    return f" (draft {info.draft_dtype})" if info.draft_dtype and info.draft_dtype != info.dtype else ""


class AppContext:
    """The session, its description, a device monitor, measured speed, demo runs and a files folder."""

    def __init__(self, options: AppOptions, session: Session, throughput: Throughput | None,
                 demo_runs: list[DemoRun]):
        self.options, self.session, self.throughput, self.demo_runs = options, session, throughput, demo_runs
        self.info = session.info
        self.monitor = DeviceMonitor(prefer_gpu=self.info.device == "cuda")
        self.files_dir = Path(tempfile.mkdtemp(prefix="easyspec-app-"))
        self.exporter = Exporter(self.info.draft_layers)  # this app's Prometheus metrics (/metrics)
        self.exporter.set_pair(self.info.base, self.info.draft, self.info.dtype, self.info.device, self.info.devices)

    @classmethod
    def start(cls, options: AppOptions) -> "AppContext":
        session = Session.open(pair=options.pair_name, base=options.base, draft=options.draft, dtype=options.dtype,
                               draft_dtype=options.draft_dtype,
                               device=options.device, devices=options.devices, timeout_s=options.timeout_s,
                               memory_budget_mb=options.memory_budget_mb)
        try:
            throughput = on_thread(lambda: measure_throughput(session)) if options.probe else None
        except Exception:
            session.close()
            raise
        return cls(options, session, throughput, load_demo_runs())

    def close(self) -> None:
        self.session.close()

    @property
    def base_token_s(self) -> float:
        """The base's own seconds per token from the launch probe (0 when there was none)."""
        rate = self.throughput.tokens_per_s.get("vanilla") if self.throughput is not None else None
        return 1.0 / rate if rate else 0.0

    @property
    def max_layer_parallel(self) -> int:
        """The largest N the settings offer: the middle layers (one device) or G (across G devices)."""
        return max_layer_parallel(self.info.draft_layers or 3, self.info.devices)

    @property
    def default_layer_parallel(self) -> int:
        return default_layer_parallel(self.info.devices, self.max_layer_parallel)

    @property
    def max_new_tokens(self) -> int:
        return max(1, min(1024, self.info.context_window // 2))

    def new_files_dir(self) -> Path:
        path = self.files_dir / uuid.uuid4().hex[:12]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def models_markdown(self) -> str:
        i = self.info
        where = f"{i.devices} × {i.device}" if i.devices > 1 else i.device
        return msg("**Base** `{base}` ({base_layers} layers) · **draft** `{draft}` ({draft_layers} layers) · "
                   "{dtype} · **devices G = {g}** ({where}; set at launch with `--devices`)", base=i.base,
                   base_layers=i.base_layers, draft=i.draft, draft_layers=i.draft_layers,
                   dtype=f"{i.dtype}{draft_precision(i)}", g=i.devices, where=where)
