"""Pilot evaluation: many prompts x a grid of settings, with vanilla decoding as the yardstick.

What it is: the batch evaluation that the dashboard's Pilot screen drives and `easyspec bench`
shares. A `PilotGrid` names the settings (vanilla, sequential speculative decoding per draft
length k, and EasySpec over layer-parallel size N x calibration policy x k); `estimate_seconds`
says how long it will take from a measured `Throughput`; `run_pilot` runs every setting on every
prompt through the session's one record stream and yields progress and one result row per run
(tokens/s, speedup over vanilla on the same prompt in the same pilot, AR, AL, seconds per phase,
the run's own peak memory and its growth above the run's start, greedy equality with vanilla, and
the greedy check of a difference: rounding tie or real difference);
`summarise` folds rows per setting; CSV and JSON export.
What it is not: a UI (no gradio, no plotly), or the engine (it only consumes `Session.generate`).
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Callable, Iterator, Mapping, Sequence

from ..settings import CALIBRATION_POLICIES, SamplingConfig, SpecConfig, check_draft_dtype
from ..engine.verdicts import GreedyCheck, count_verdicts
from ..engine.metrics import compute
from ..engine.records import PHASES, RoundRecord

DEFAULT_PROMPTS = 3  # with the default grid: a few minutes on a 2-core CPU with the offline pair
MAX_GRID_RUNS = 400
MAX_CONTEXT = 131_072
CONTEXTS = (0, 256, 2048, 8192)  # what the Pilot screen offers: as given, 256, 2k and 8k prompt tokens
PROMPT_FIELDS = ("prompt", "max_new_tokens", "tree_depth")  # a setting's errors that depend on the prompt


def context_suffix(context: int) -> str:
    """How a setting's label names its context length ('' for the prompt as given)."""
    return f" · ctx {context}" if context else ""


@lru_cache(maxsize=1)
def shared_document() -> str:
    """The text a long-context prompt starts with: this package's own engine and evaluation code, in a fixed
    order (shipped with it, so every pilot of a given version reads the same document)."""
    root = resources.files("easyspec.core")
    files = sorted((f for folder in ("engine", "runtime", "evaluation", "tuner", "models")
                    for f in root.joinpath(folder).iterdir() if f.name.endswith(".py")), key=lambda f: str(f))
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


@lru_cache(maxsize=2)
def _document_ids(tokenizer, document: str) -> list[int]:
    """The shared document's token ids, tokenised once per tokenizer (every context length and every call of a
    pilot, the check and the run, cut from the same ids)."""
    return tokenizer(document, add_special_tokens=False)["input_ids"]


def prompt_ids_at(session, prompts: Sequence[str], chat: bool, context: int) -> list[list[int]]:
    """The prompts' token ids brought to about `context` tokens: each prompt after the first tokens of
    `shared_document` (the question comes last, as in a long-context request). 0, or a prompt already that
    long: the prompt as given. The count is near `context`, not exact: the document's cut is re-tokenised."""
    out = []
    for prompt in prompts:
        ids = session.encode(prompt, chat)
        if context and len(ids) < context:
            document = _document_ids(session.tokenizer, shared_document())
            if len(document) < context - len(ids):
                raise ValueError(f"the shared document holds {len(document)} tokens, fewer than the {context} "
                                 f"asked for: choose a shorter context length")
            cut = session.decode(document[: context - len(ids)])
            ids = session.encode(f"{cut}\n\n{prompt}", chat)
        out.append(ids)
    return out


@dataclass(frozen=True)
class PilotSetting:
    label: str
    config: SpecConfig
    applied: tuple[str, ...] = ()  # what the run plan decided beyond the setting's words (RunPlan.applied)
    reference: str | None = None  # the sequential-drafting setting at the same k (criteria.py), if the grid has it
    context: int = 0  # prompt tokens the prompts are brought to with the shared document (0: as given)


@dataclass(frozen=True)
class PilotGrid:
    """What to run on every prompt. Vanilla always runs first: it is the speedup's reference."""

    layer_parallel: tuple[int, ...] = (2, 4)
    plans: tuple[str, ...] = ()  # layer plans run next to the N values: "0|1-4|...|23", or "auto" (the tuned one)
    calibration: tuple[str, ...] = ("none", "every-round")
    draft_len: tuple[int, ...] = (5,)
    speculative: bool = True  # also sequential speculative decoding (N = 1, exact) for each k
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat: bool = True
    tree_depth: int = 0  # > 0: every drafting setting also runs with a token tree of this depth ...
    tree_width: int = 4  # ... and width
    adaptive: bool = False  # every drafting setting also runs with adaptive draft length / tree depth
    draft_dtypes: tuple[str, ...] = ()  # every drafting setting runs at each draft precision ("": the session's)
    contexts: tuple[int, ...] = (0,)  # prompt lengths in tokens, each made with the shared document (0: as given)

    def __post_init__(self) -> None:
        object.__setattr__(self, "draft_dtypes", tuple(dict.fromkeys(self.draft_dtypes)))
        object.__setattr__(self, "contexts", tuple(dict.fromkeys(self.contexts)))
        if not self.contexts or any(int(c) != c or not 0 <= c <= MAX_CONTEXT for c in self.contexts):
            raise ValueError(f"context lengths must be whole numbers of prompt tokens from 0 (the prompt as given) "
                             f"to {MAX_CONTEXT}; got {list(self.contexts)}")
        for name in self.draft_dtypes:
            check_draft_dtype(name, "draft precisions")
        for name in ("layer_parallel", "plans", "calibration", "draft_len"):
            values = tuple(dict.fromkeys(getattr(self, name)))  # drop repeats, keep order
            if not values and name != "plans" and (name != "layer_parallel" or not self.plans):
                raise ValueError(f"the pilot grid needs at least one {name.replace('_', ' ')} value")
            object.__setattr__(self, name, values)
        bad = [c for c in self.calibration if c not in CALIBRATION_POLICIES]
        if bad:
            raise ValueError(f"unknown calibration policy {bad[0]!r}: choose from {', '.join(CALIBRATION_POLICIES)}")
        if any(int(n) != n or n < 1 for n in self.layer_parallel):
            raise ValueError(f"layer-parallel sizes must be whole numbers >= 1; got {list(self.layer_parallel)}")
        if any(int(k) != k or k < 1 for k in self.draft_len):
            raise ValueError(f"draft lengths must be whole numbers >= 1; got {list(self.draft_len)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max new tokens must be >= 1; got {self.max_new_tokens}")
        SamplingConfig(self.temperature, self.top_p, 0, self.seed)  # raises on a bad value
        SpecConfig(tree_depth=self.tree_depth, tree_width=self.tree_width)  # raises on a bad tree shape

    def _drafting(self) -> list[tuple[str, dict]]:
        """Label suffix and SpecConfig fields of each drafting variant: chain, tree, adaptive."""
        out = [("", {})]
        if self.tree_depth:
            out.append((f" tree {self.tree_depth}x{self.tree_width}",
                        dict(tree_depth=self.tree_depth, tree_width=self.tree_width)))
        if self.adaptive:
            out += [(f"{suffix} adaptive", {**kw, "adaptive": True}) for suffix, kw in out]
        return out

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def settings(self) -> list[PilotSetting]:
        common = dict(max_new_tokens=self.max_new_tokens, sampling=self.sampling)
        out = [PilotSetting("vanilla", SpecConfig(mode="vanilla", **common))]
        variants = self._drafting()
        if self.speculative:
            out += [PilotSetting(f"speculative k={k}{suffix}", SpecConfig(mode="speculative", draft_len=k, **kw,
                                                                          **common))
                    for k in self.draft_len for suffix, kw in variants]
        for k in self.draft_len:
            ref = {suffix: f"speculative k={k}{suffix}" if self.speculative else None for suffix, _ in variants}
            for policy in self.calibration:
                for n in self.layer_parallel:
                    out += [PilotSetting(f"easyspec N={n} {policy} k={k}{suffix}", SpecConfig(
                        mode="easyspec", layer_parallel=n, calibration=policy, draft_len=k, **kw, **common),
                        reference=ref[suffix]) for suffix, kw in variants]
                for plan in self.plans:
                    name = "auto" if plan == "auto" else f"plan {plan}"
                    out += [PilotSetting(f"easyspec {name} {policy} k={k}{suffix}", SpecConfig(
                        mode="easyspec", groups=plan, calibration=policy, draft_len=k, **kw, **common),
                        reference=ref[suffix]) for suffix, kw in variants]
        if self.draft_dtypes:
            out = out[:1] + [PilotSetting(f"{s.label} [{d}]", replace(s.config, draft_dtype=d),
                                          reference=s.reference and f"{s.reference} [{d}]")
                             for s in out[1:] for d in self.draft_dtypes]
        if self.contexts == (0,):
            return out
        # every setting again at each context, vanilla first at each (the speedup's reference there)
        return [replace(s, label=f"{s.label}{context_suffix(c)}", context=c,
                        reference=s.reference and f"{s.reference}{context_suffix(c)}")
                for c in self.contexts for s in out]


@dataclass(frozen=True)
class Throughput:
    """Measured speed of this session, for duration estimates: only the modes a probe run measured.

    tokens_per_s: mode -> decode tokens/s of that mode's own probe run; settings: mode -> what that
    run was ("k=5", "N=4 every-round k=5"), so that a note names what each number measured.
    """

    prefill_tokens_per_s: float
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    def decode_rate(self, mode: str) -> float:
        """The mode's measured rate; an unmeasured mode is estimated at vanilla's (see `describe`)."""
        return self.tokens_per_s.get(mode) or self.tokens_per_s.get("vanilla") or 1.0

    def describe(self) -> str:
        """'vanilla 9.1 tok/s, speculative k=5 12.0 tok/s, ...': each measured mode with its settings."""
        return ", ".join(" ".join(x for x in (mode, self.settings.get(mode, ""), f"{rate:.1f} tok/s") if x)
                         for mode, rate in self.tokens_per_s.items())


def _decode_rate(records: Sequence[RoundRecord]) -> float:
    m = compute(records)
    after_first = m.total_s - m.time_to_first_token_s
    return (m.new_tokens - 1) / after_first if m.new_tokens > 1 and after_first > 0 else m.tokens_per_s


def measure_throughput(session, prompt: str = "def fibonacci(n):", new_tokens: int = 8,
                       modes: Sequence[str] = ("vanilla", "speculative", "easyspec")) -> Throughput:
    """A short run per mode (it also warms the models up), each mode's rate from its own run; the
    drafting modes are skipped without a draft. Needs the device: call it outside runs."""
    if "vanilla" not in modes:
        raise ValueError("the throughput probe needs vanilla: it is the estimate for unmeasured modes")
    ids = session.encode(prompt, False)
    for _ in session.generate(session.plan(SpecConfig(mode="vanilla", max_new_tokens=2), ids)):  # warm-up
        pass
    rates, settings, prefill = {}, {}, []
    for mode in modes:
        if mode != "vanilla" and session.draft is None:
            continue
        # The default k, and for easyspec the default N (within the middle layers, N <= G across devices).
        plan = session.plan(SpecConfig(mode=mode, max_new_tokens=new_tokens,
                                       layer_parallel=None if mode == "easyspec" else 1), ids)
        c = plan.settings
        settings[mode] = {"vanilla": "", "speculative": f"k={c.draft_len}"}.get(
            mode, f"N={c.layer_parallel} {c.calibration} k={c.draft_len}")
        records = list(session.generate(plan))
        rates[mode] = _decode_rate(records)
        prefill.append(len(ids) / max(records[0].end_ns / 1e9, 1e-9))
    return Throughput(prefill_tokens_per_s=max(prefill), tokens_per_s=rates, settings=settings)


def estimate_seconds(prompt_tokens: Sequence[int], grid: PilotGrid, speed: Throughput) -> float:
    """Expected wall time of `run_pilot`: prefill (of the prompt at its setting's context length) plus
    max_new_tokens at the measured rate, per run."""
    total = 0.0
    for setting in grid.settings():
        rate = speed.decode_rate(setting.config.mode)
        for n in prompt_tokens:
            total += max(n, setting.context) / speed.prefill_tokens_per_s + grid.max_new_tokens / rate
    return total


def describe_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def pilot_prompt_ids(session, prompts: Sequence[str], grid: PilotGrid) -> dict[int, list[list[int]]]:
    """The prompts' token ids at each of the grid's context lengths (`prompt_ids_at`)."""
    if not prompts:
        raise ValueError("the pilot has no prompts")
    return {c: prompt_ids_at(session, prompts, grid.chat, c) for c in grid.contexts}


def check_pilot(session, prompt_ids: Mapping[int, Sequence[Sequence[int]]],
                grid: PilotGrid) -> list[tuple[PilotSetting, list]]:
    """Every setting resolved against every prompt (at the setting's context length: `pilot_prompt_ids`)
    before any device work (ValueError says which): one `Session.plan` per run, kept for the run. Each
    setting's config is its resolved settings ("auto" becomes the tuned plan), so that the rows and the
    report name the plan that ran."""
    settings = list(grid.settings())
    prompts = len(prompt_ids[grid.contexts[0]])
    runs = len(settings) * prompts
    if runs > MAX_GRID_RUNS:
        raise ValueError(f"the pilot would make {runs} runs ({len(settings)} settings x {prompts} prompts); "
                         f"the limit is {MAX_GRID_RUNS}: pick fewer prompts or grid values")
    planned = []
    for setting in settings:
        plans = []
        for i, ids in enumerate(prompt_ids[setting.context]):
            try:
                plans.append(session.plan(setting.config, ids))
            except ValueError as exc:
                where = f", prompt {i + 1}" if getattr(exc, "field", "") in PROMPT_FIELDS else ""
                raise ValueError(f"setting '{setting.label}'{where}: {exc}") from None
        planned.append((replace(setting, config=plans[0].settings, applied=plans[0].applied), plans))
    return planned


@dataclass(frozen=True)
class PilotProgress:
    done: int
    total: int
    label: str
    elapsed_s: float


@dataclass(frozen=True)
class PilotRun:
    prompt_index: int
    setting: PilotSetting
    records: tuple[RoundRecord, ...]
    token_ids: tuple[int, ...]
    row: dict


def memory_columns(m) -> dict:
    """This run's memory (metrics.memory_label says what each source measures); None when unknown."""
    known = bool(m.run_peak_memory_bytes)
    return {"memory_source": m.memory_source or None,
            "run_peak_memory_mib": round(m.run_peak_memory_bytes / 2**20, 1) if known else None,
            "run_memory_growth_mib": round(m.run_memory_growth_bytes / 2**20, 1) if known else None}


def _largest(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def result_row(prompt_index: int, setting: PilotSetting, prompt_tokens: int, records: Sequence[RoundRecord],
               vanilla: PilotRun | None, check: GreedyCheck | None = None) -> dict:
    """One flat row of plain values (what the CSV holds). check: the greedy check against vanilla
    (lossless.py), for greedy runs with a vanilla run of the same prompt."""
    m, cfg = compute(records), setting.config
    tokens = tuple(t for r in records for t in r.token_ids)
    drafting = [r for r in records if r.drafted]
    easy = cfg.mode == "easyspec"
    row = {
        "prompt": prompt_index + 1, "setting": setting.label, "mode": cfg.mode,
        "layer_parallel": cfg.layer_parallel if easy and not cfg.groups else None,
        "groups": cfg.groups if easy and cfg.groups else None, "calibration": cfg.calibration if easy else None,
        "applied": "; ".join(setting.applied) or None,  # what the run plan chose (RunPlan.applied): tuned plan, policy
        "reference": setting.reference, "context": setting.context,
        "draft_len": cfg.draft_len if cfg.mode != "vanilla" else None,
        "prompt_tokens": prompt_tokens, "new_tokens": m.new_tokens, "rounds": m.rounds,
        "drafting_rounds": len(drafting), "drafted": m.drafted, "accepted": m.accepted,
        "total_s": round(m.total_s, 6), "tokens_per_s": round(m.tokens_per_s, 4), "speedup": None,
        "acceptance_rate": None if m.acceptance_rate is None else round(m.acceptance_rate, 4),
        "mean_accepted_length": None if m.mean_accepted_length is None else round(m.mean_accepted_length, 4),
        "ttft_s": round(m.time_to_first_token_s, 6), "draft_s": round(m.draft_s, 6),
        "verify_s": round(m.verify_s, 6), "calibrate_s": round(m.calibrate_s, 6),
        **{f"{p}_s": round(m.phase_s.get(p, 0.0), 6) for p in PHASES},
        **memory_columns(m),
        "equal_to_vanilla": None, "greedy_check": None, "fp32_gap": None, "stop": records[-1].stop,
    }
    if vanilla is not None and cfg.mode != "vanilla":
        base_rate = vanilla.row["tokens_per_s"]
        row["speedup"] = round(m.tokens_per_s / base_rate, 4) if base_rate else None
        if cfg.sampling.greedy:
            row["equal_to_vanilla"] = tokens == vanilla.token_ids
            if check is not None:
                assert (check.verdict == "equal") == row["equal_to_vanilla"], (check, row["setting"])
                row["greedy_check"] = check.verdict
                row["fp32_gap"] = None if check.gap is None else round(check.gap, 6)
    elif cfg.mode == "vanilla":
        row["speedup"] = 1.0
    return row


def run_pilot(session, prompts: Sequence[str], grid: PilotGrid, should_stop: Callable[[], bool] = lambda: False,
              planned: list | None = None) -> Iterator[PilotProgress | PilotRun]:
    """Yield a PilotProgress before each run and a PilotRun after it; stop within one round on request.
    `planned`: what `check_pilot` returned for these prompts and grid, when the caller checked first."""
    from ..engine.lossless import compare_greedy  # torch: the pilot's summaries and report read without it

    prompt_ids = pilot_prompt_ids(session, prompts, grid)
    planned = planned if planned is not None else check_pilot(session, prompt_ids, grid)
    total, done, t0 = len(planned) * len(prompts), 0, time.perf_counter()
    # Warm-up: the first forward of a process is slow (allocations, kernel selection); keep it out
    # of the vanilla yardstick.
    warm = prompt_ids[min(grid.contexts)][0]
    for _ in session.generate(session.plan(SpecConfig(mode="vanilla", max_new_tokens=2), warm)):
        pass
    for i in range(len(prompts)):
        vanilla: PilotRun | None = None  # this prompt's vanilla run at the context length in progress
        for setting, plans in planned:
            ids = prompt_ids[setting.context][i]
            yield PilotProgress(done, total, f"prompt {i + 1}/{len(prompts)}: {setting.label}",
                                time.perf_counter() - t0)
            records: list[RoundRecord] = []
            stream = session.generate(plans[i])
            try:
                for rec in stream:
                    records.append(rec)
                    if should_stop():
                        break
            finally:
                stream.close()
            if should_stop():
                yield PilotProgress(done, total, "stopped", time.perf_counter() - t0)
                return
            tokens = tuple(t for r in records for t in r.token_ids)
            check = None
            if vanilla is not None and setting.config.mode != "vanilla" and setting.config.sampling.greedy:
                check = compare_greedy(session, ids, tokens, vanilla.token_ids)
            run = PilotRun(i, setting, tuple(records), tokens,
                           result_row(i, setting, len(ids), records, vanilla, check))
            vanilla = run if setting.config.mode == "vanilla" else vanilla
            done += 1
            yield run
    yield PilotProgress(done, total, "done", time.perf_counter() - t0)


def summarise(rows: Sequence[dict]) -> list[dict]:
    """One row per setting, in first-seen order: tokens/s and speedup from summed tokens and seconds
    (vanilla's over the same prompts at the same context length), AR from summed counts, AL over all
    drafting rounds."""
    order = list(dict.fromkeys(r["setting"] for r in rows))
    vanilla = [r for r in rows if r["mode"] == "vanilla"]
    out = []
    for label in order:
        mine = [r for r in rows if r["setting"] == label]
        prompts = {r["prompt"] for r in mine}
        tokens, seconds = sum(r["new_tokens"] for r in mine), sum(r["total_s"] for r in mine)
        first = mine[0]
        ref = [r for r in vanilla if r["prompt"] in prompts and r.get("context", 0) == first.get("context", 0)]
        ref_rate = sum(r["new_tokens"] for r in ref) / max(sum(r["total_s"] for r in ref), 1e-12) if ref else None
        rate = tokens / seconds if seconds > 0 else 0.0
        drafted, accepted = sum(r["drafted"] for r in mine), sum(r["accepted"] for r in mine)
        al_rounds = sum(r["drafting_rounds"] for r in mine)
        al_tokens = sum((r["mean_accepted_length"] or 0) * r["drafting_rounds"] for r in mine)
        equal = [r["equal_to_vanilla"] for r in mine if r["equal_to_vanilla"] is not None]
        verdicts = count_verdicts(r.get("greedy_check") for r in mine)
        out.append({
            "setting": label, "mode": first["mode"], "layer_parallel": first["layer_parallel"],
            "groups": first.get("groups"),
            "calibration": first["calibration"], "applied": first.get("applied"), "reference": first.get("reference"),
            "context": first.get("context", 0),
            "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in mine) / len(mine)),
            "draft_len": first["draft_len"], "prompts": len(prompts),
            "new_tokens": tokens, "total_s": round(seconds, 4), "tokens_per_s": round(rate, 4),
            "speedup": round(rate / ref_rate, 4) if ref_rate else None,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
            "mean_accepted_length": round(al_tokens / al_rounds, 4) if al_rounds else None,
            **{k: round(sum(r[k] for r in mine), 4) for k in ("draft_s", "verify_s", "calibrate_s", "sample_s",
                                                             "overhead_s")},
            "memory_source": first.get("memory_source"),  # largest over the prompts' runs, not a sum:
            **{f"largest_{k}": _largest(r.get(k) for r in mine) for k in ("run_peak_memory_mib",
                                                                           "run_memory_growth_mib")},
            "equal_to_vanilla": (all(equal) if equal else None),
            # the greedy checks (lossless.py): token-for-token equal, rounding ties, real differences (bugs)
            **({f"greedy_{v}": n for v, n in verdicts.items()} if sum(verdicts.values()) else
               dict.fromkeys(f"greedy_{v}" for v in verdicts)),
        })
    return out


def rows_to_csv(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


def pilot_json(rows: Sequence[dict], grid: PilotGrid, prompts: Sequence[str], session_info: dict | None = None) -> str:
    """Everything a report needs: grid, models, prompts, per-run rows and the per-setting summary."""
    grid_d = asdict(grid)
    return json.dumps({"grid": grid_d, "session": session_info or {}, "prompts": list(prompts),
                       "rows": list(rows), "summary": summarise(rows)}, indent=1)
