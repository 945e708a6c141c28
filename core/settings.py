"""A run's settings as a user gives them, the run plan they resolve to, and the one rule for each limit.

What it is: plain frozen dataclasses and checks, importable without torch (the dashboard's figures
and forms use them): `SamplingConfig`, `SpecConfig` (mode, layer-parallel size N or a plan text or
"auto", calibration, draft length k, sampling, tree, adaptive, stops), `RunPlan` (the same settings
fully resolved: the layer plan as ranges, the calibration policy that runs, the expected acceptance,
and what the resolution applied), and `SettingsError`, which names the field it is about so that each
front end words it its own way (the CLI as its flag, the dashboard as its label).
The layer-parallel size's default and limit are defined here and nowhere else.
What it is not: resolution against loaded models, devices and the tuner (`planning.py`, through
`Session.plan`), or the generation loop that runs a plan (`engine/loop.py`).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

MODES = ("vanilla", "speculative", "easyspec")
CALIBRATION_POLICIES = ("none", "every-round", "on-mismatch")
AUTO = "auto"  # calibration: the tuner's recommended policy with a tuned plan, else DEFAULT_CALIBRATION
DEFAULT_CALIBRATION = "every-round"  # the paper's wording: calibrate after every round
CALIBRATION_CHOICES = (AUTO, *CALIBRATION_POLICIES)  # what a user may ask for
ON_LOW_ACCEPTANCE = ("warn", "fallback")
FLOAT_DTYPES = ("float32", "bfloat16")
QUANTIZED_DTYPES = ("int8", "int4", "int4-g128")  # weight-only schemes (models/quantize.py)
DRAFT_DTYPES = (*FLOAT_DTYPES, *QUANTIZED_DTYPES)
SEED_LIMIT = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
DEFAULT_LAYER_PARALLEL = 4  # N around 4 works best in the paper; 5 degrades

Group = tuple[int, int]  # a half-open range [start, end) of draft layers run as one step

# How each front end names a field. The CLI's flags are the default rendering of a SettingsError.
FLAGS = {"mode": "--mode", "draft_len": "--draft-len", "layer_parallel": "--layer-parallel",
         "sequential_head": "--sequential-head", "sequential_tail": "--sequential-tail",
         "calibration": "--calibration", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
         "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed", "stop_strings": "--stop",
         "tree_depth": "--tree-depth", "tree_width": "--tree-width", "adaptive": "--adaptive", "groups": "--groups",
         "on_low_acceptance": "--on-low-acceptance", "draft_dtype": "--draft-dtype",
         "expected_acceptance": "expected acceptance", "base_token_s": "base seconds per token",
         "prompt": "the prompt"}
_MARK = "\x1f"


def name(key: str) -> str:
    """A field's place in a SettingsError's text; each front end fills in its own word for it."""
    assert key in FLAGS, key
    return f"{_MARK}{key}{_MARK}"


class SettingsError(ValueError):
    """A run setting the engine cannot run, about `field` (a SpecConfig field, or "prompt"). str() is the
    command line's wording; `render(labels)` puts any front end's names in the fields' places."""

    def __init__(self, field: str, text: str):
        assert field in FLAGS, field
        self.field, self.text = field, text
        super().__init__(self.render(FLAGS))

    def render(self, names: Mapping[str, str]) -> str:
        return re.sub(f"{_MARK}(\\w+){_MARK}", lambda m: names.get(m[1], FLAGS[m[1]]), self.text)


def check_finite(value, what: str) -> None:
    """Refuse NaN, infinities and non-numbers: NaN slips past range checks written as comparisons
    and an infinite temperature samples uniformly. `what` is a field key or a flag's own text."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _refuse(what, f"{_named(what)} must be a finite number; got {value!r}")


def check_whole(value, what: str) -> None:
    """Refuse anything but an integer (a float, even 5.0 or inf, is not a count or a seed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _refuse(what, f"{_named(what)} must be a whole number; got {value!r}")


def _named(what: str) -> str:
    return name(what) if what in FLAGS else what


def _refuse(what: str, text: str):
    raise SettingsError(what, text) if what in FLAGS else ValueError(text)


def check_draft_dtype(value: str, what: str = "draft_dtype") -> str:
    if value not in DRAFT_DTYPES:
        _refuse(what, f"{_named(what)}: unknown draft precision {value!r}: choose one of {', '.join(DRAFT_DTYPES)} "
                      f"(int4 uses groups of 32 input channels, int4-g128 groups of 128)")
    return value


def check_stop_strings(stop_strings: Sequence[str]) -> None:
    """Every stop string must be non-empty text: "" occurs in any text, so it would end every run
    after its first token."""
    for s in stop_strings:
        if not isinstance(s, str):
            raise SettingsError("stop_strings", f"{name('stop_strings')}: a stop string must be text; got {s!r}")
        if not s:
            raise SettingsError("stop_strings", f"{name('stop_strings')}: a stop string must not be empty (it would "
                                                f"end every run after its first token)")


# -- the layer-parallel size N: its default and its limit ---------------------------------------------
def default_layer_parallel(devices: int = 1, middle: int | None = None) -> int:
    """N when the user gives none: 4, or G when fewer devices hold the groups (N <= G across devices), and
    never more than the `middle` layers of the draft when it is known."""
    n = DEFAULT_LAYER_PARALLEL if devices == 1 else min(DEFAULT_LAYER_PARALLEL, devices)
    return min(n, middle) if middle else n


def middle_layers(n_layers: int, head: int = 1, tail: int = 1) -> int:
    """The draft layers between the sequential head and tail, which the groups of N cover."""
    if head < 0 or tail < 0:
        raise SettingsError("sequential_head", f"{name('sequential_head')} and {name('sequential_tail')} must be "
                                               f">= 0 (got {head} and {tail})")
    middle = n_layers - head - tail
    if middle < 1:
        raise SettingsError("sequential_head", f"{name('sequential_head')} {head} and {name('sequential_tail')} "
                                               f"{tail} leave no middle layers in a draft of {n_layers} layers")
    return middle


def max_layer_parallel(n_layers: int, devices: int = 1, head: int = 1, tail: int = 1) -> int:
    """The largest N: every middle layer in one group on one device; at most G across G devices, where each
    layer of a group runs on its own device."""
    middle = middle_layers(n_layers, head, tail)
    return middle if devices == 1 else min(middle, devices)


def check_layer_parallel(n: int, n_layers: int, head: int = 1, tail: int = 1) -> None:
    """1 <= N <= the middle layers (on one device; the device limit is checked on the whole plan)."""
    middle = middle_layers(n_layers, head, tail)
    if not 1 <= n <= middle:
        raise SettingsError("layer_parallel", f"{name('layer_parallel')} must be between 1 and the number of middle "
                                              f"layers ({middle} for a {n_layers}-layer draft with head {head} and "
                                              f"tail {tail}); got {n}")


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    seed: int = 0

    def __post_init__(self) -> None:
        check_finite(self.temperature, "temperature")
        check_finite(self.top_p, "top_p")
        check_whole(self.top_k, "top_k")
        check_whole(self.seed, "seed")
        if self.temperature < 0:
            raise SettingsError("temperature", f"{name('temperature')} must be >= 0 (0 is greedy); "
                                               f"got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SettingsError("top_p", f"{name('top_p')} must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise SettingsError("top_k", f"{name('top_k')} must be >= 0 (0 turns it off); got {self.top_k}")
        if not 0 <= self.seed <= SEED_LIMIT:
            raise SettingsError("seed", f"{name('seed')} must be between 0 and {SEED_LIMIT}; got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SpecConfig:
    """A run's settings as given. Defaults are the product's: easyspec, N = 4, calibration auto (every
    round unless a tuned plan recommends another policy), k = 5, greedy.

    layer_parallel: None means the default for the devices and the draft (`default_layer_parallel`).
    groups: an explicit layer plan ('0|1-4|...|23', engine/grouping.py) that replaces N, head and tail;
    "auto" is the plan the tuner chose for this pair; "" means equal groups of N.
    draft_dtype: float32 | bfloat16 | int8 | int4 | int4-g128 picks the draft the session loaded at that
    precision ("" is the session's); greedy outputs stay the base's whatever it is.
    expected_acceptance: the acceptance rate this run should reach, 0 if unknown (the tuner's, filled
    in by the resolution); the monitor flags rounds whose rolling acceptance falls far below it.
    on_low_acceptance: "warn" (flag the rounds only) or "fallback" (engine/monitor.py FallbackGuard:
    sequential drafting, then none); base_token_s: the base's own seconds per token, 0 if unknown.
    """

    mode: str = "easyspec"
    draft_len: int = 5
    layer_parallel: int | None = None
    sequential_head: int = 1
    sequential_tail: int = 1
    calibration: str = AUTO
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_strings: tuple[str, ...] = ()
    tree_depth: int = 0  # 0 drafts a chain of draft_len tokens; d > 0 drafts a token tree of depth d
    tree_width: int = 4  # tree leaves kept per level (and children per leaf); used when tree_depth > 0
    adaptive: bool = False  # adapt the draft length (chain) or depth (tree) per round (engine/loop.py Adaptive)
    groups: str = ""
    expected_acceptance: float = 0.0
    on_low_acceptance: str = "warn"
    base_token_s: float = 0.0
    draft_dtype: str = ""

    def __post_init__(self) -> None:
        if self.draft_dtype:
            check_draft_dtype(self.draft_dtype)
        counts = ("draft_len", "max_new_tokens", "sequential_head", "sequential_tail", "tree_depth", "tree_width")
        for key in counts + (("layer_parallel",) if self.layer_parallel is not None else ()):
            check_whole(getattr(self, key), key)
        check_finite(self.expected_acceptance, "expected_acceptance")
        if not 0.0 <= self.expected_acceptance <= 1.0:
            raise SettingsError("expected_acceptance", f"{name('expected_acceptance')} must be between 0 and 1; "
                                                       f"got {self.expected_acceptance}")
        check_stop_strings(self.stop_strings)
        check_finite(self.base_token_s, "base_token_s")
        if self.base_token_s < 0:
            raise SettingsError("base_token_s", f"{name('base_token_s')} must be >= 0; got {self.base_token_s}")
        if self.on_low_acceptance not in ON_LOW_ACCEPTANCE:
            raise SettingsError("on_low_acceptance", f"{name('on_low_acceptance')} {self.on_low_acceptance!r}: "
                                                     f"choose one of {', '.join(ON_LOW_ACCEPTANCE)}")
        if self.mode not in MODES:
            raise SettingsError("mode", f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.calibration not in CALIBRATION_CHOICES:
            raise SettingsError("calibration", f"unknown calibration policy {self.calibration!r}: choose one of "
                                               f"{', '.join(CALIBRATION_CHOICES)}")
        for key, least, why in (("draft_len", 1, ""), ("max_new_tokens", 1, ""), ("layer_parallel", 1, ""),
                                ("tree_depth", 0, " (0 drafts a chain)"), ("tree_width", 1, "")):
            if getattr(self, key) is not None and getattr(self, key) < least:
                raise SettingsError(key, f"{name(key)} must be >= {least}{why}; got {getattr(self, key)}")

    @property
    def tree(self) -> bool:
        return self.tree_depth > 0 and self.mode != "vanilla"

    def as_dict(self) -> dict:
        """Plain JSON values (tuples become lists), as a saved run stores them."""
        d = asdict(self)
        d["stop_strings"] = list(self.stop_strings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SpecConfig":
        """The settings of a saved run (keys a run file adds beside them, such as `applied`, are not settings)."""
        own = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**own, "sampling": SamplingConfig(**d["sampling"]),
                      "stop_strings": tuple(d.get("stop_strings", ()))})


@dataclass(frozen=True)
class RunPlan:
    """One run, resolved once against the loaded models, devices and tuning (`Session.plan`); the
    engine runs nothing else.

    settings: as given, with every choice made: layer_parallel the N that runs, groups the plan text
    that runs (easyspec; "" otherwise), calibration the policy that runs, expected_acceptance filled in.
    layers: the draft's layer plan as half-open ranges (easyspec), None for sequential drafting.
    applied: what the resolution decided for the user, in words a run file and a report can show
    (for example "tuned plan 0|1-6|7-23" and "tuned calibration on-mismatch").
    """

    settings: SpecConfig
    prompt_ids: tuple[int, ...]
    layers: tuple[Group, ...] | None = None
    applied: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The settings as a saved run stores them, with what the resolution applied."""
        return {**self.settings.as_dict(), "applied": list(self.applied)}
