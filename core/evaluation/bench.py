"""`easyspec bench acceptance` and `easyspec bench speed`: the paper's claims on our hardware.

acceptance: per (N, calibration policy) the acceptance rate, mean accepted length, per-position
acceptance and the relative drop against N = 1 of the same policy, greedy and sampled, over a
prompt set. It runs through the pilot's one implementation (`pilot.run_pilot`).
speed: tokens/s of vanilla, speculative and easyspec, and in the same process on the same prompts
transformers' own assisted generation with the same pair, dtype and a constant draft length (its
adaptive schedule and confidence threshold off), plus its default settings; medians over repeats
after a warm-up, ratios to vanilla per prompt and repeat, and output equality for every prompt (a
difference classified as a rounding tie or a real difference, `lossless.py`).
Both can add token-tree and adaptive variants of every drafting setting (`drafting` column), so that
chain, tree and adaptive drafting are compared in the same run.
Every result keeps its raw data under "runs" (each run's prompt, settings, emitted token ids, wall
seconds and every round as saved by `records.record_to_dict`, spans left out) and its table rows are
computed from those runs by `acceptance_rows` / `speed_rows`, so `rows_from_runs` rebuilds them
from a results JSON alone.
What it is not: the per-phase latency benchmark (`gpu_bench.py`) or the pilot (`pilot.py`); it prints
nothing (progress goes to the caller's callback, else to this module's logger).
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict
from typing import Callable, Sequence

import torch

from ..settings import SpecConfig
from ..engine.metrics import compute, memory_label
from ..engine.lossless import compare_greedy
from ..engine.verdicts import VERDICTS, count_verdicts, same_column
from .pilot import PilotGrid, PilotRun, PilotSetting, result_row, run_pilot, summarise
from ..engine.records import RoundRecord, record_from_dict, record_to_dict

Progress = Callable[[str], None]
logger = logging.getLogger(__name__)


def raw_rounds(records: Sequence[RoundRecord], spans: bool = False) -> list[dict]:
    """Every round as plain values (drafted ids, accepted, emitted ids and origins, calibrated,
    per-phase seconds, end time); spans only when asked (they are most of a record's size)."""
    return [{**record_to_dict(r), **({} if spans else {"spans": []})} for r in records]


def records_from_raw(rounds: Sequence[dict]) -> list[RoundRecord]:
    return [record_from_dict(d) for d in rounds]


def raw_run(records: Sequence[RoundRecord], spans: bool = False, **fields) -> dict:
    """One run's raw data: the given fields (prompt, setting, ...), emitted tokens, wall seconds, rounds."""
    return {**fields, "token_ids": [t for r in records for t in r.token_ids], "wall_s": records[-1].end_ns / 1e9,
            "rounds": raw_rounds(records, spans)}


def per_position(runs: Sequence[PilotRun]) -> tuple[float, ...]:
    """Rounds that accepted position i / rounds that drafted position i, over all runs given."""
    rounds = [r for run in runs for r in run.records if r.drafted]
    depth = max((len(r.drafted) for r in rounds), default=0)
    return tuple(round(sum(r.accepted > i for r in rounds) / max(1, sum(len(r.drafted) > i for r in rounds)), 4)
                 for i in range(depth))


def drafting(cfg: SpecConfig) -> str:
    """'chain', 'tree 4x4', 'chain adaptive', ...: how a setting drafts."""
    text = f"tree {cfg.tree_depth}x{cfg.tree_width}" if cfg.tree else "chain"
    return f"{text} adaptive" if cfg.adaptive else text


def _verdicts(summary: dict) -> dict[str, int] | None:
    """A pilot summary's greedy-check counts {"equal", "tie", "different"} (None: sampled, nothing compared)."""
    counts = {v: summary[f"greedy_{v}"] for v in VERDICTS}
    return None if counts["equal"] is None else counts


def acceptance(session, prompts: Sequence[str], layer_parallel: Sequence[int], calibration: Sequence[str],
               draft_len: int, max_new_tokens: int, temperatures: Sequence[float] = (0.0, 0.8), seed: int = 0,
               progress: Progress = logger.info, keep: list | None = None, tree_depth: int = 0, tree_width: int = 4,
               adaptive: bool = False) -> dict:
    """{"rows": one per (temperature, N, policy, drafting), "runs": the raw runs they come from}; N = 1
    is added as the reference when missing. `keep` receives (grid, runs) per temperature, for a report."""
    sizes = tuple(sorted(set(layer_parallel) | {1}))
    raw = []
    for temperature in temperatures:
        grid = PilotGrid(layer_parallel=sizes, calibration=tuple(calibration), draft_len=(draft_len,),
                         speculative=False, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         tree_depth=tree_depth, tree_width=tree_width, adaptive=adaptive)
        runs: list[PilotRun] = []
        for event in run_pilot(session, prompts, grid):
            if isinstance(event, PilotRun):
                runs.append(event)
            else:
                progress(f"acceptance T={temperature}: {event.label} ({event.done}/{event.total})")
        if keep is not None:
            keep.append((grid, runs))
        raw += [raw_run(r.records, temperature=temperature, prompt_index=r.prompt_index,
                        prompt=prompts[r.prompt_index], setting=r.setting.label, config=asdict(r.setting.config),
                        prompt_tokens=r.row["prompt_tokens"],  # the greedy check needs the weights: kept
                        greedy_check=r.row["greedy_check"], fp32_gap=r.row["fp32_gap"]) for r in runs]
    return {"rows": acceptance_rows(raw, draft_len), "runs": raw}


def _pilot_runs(raw: Sequence[dict]) -> list[PilotRun]:
    """PilotRuns rebuilt from raw runs of one pilot pass, each row against its prompt's vanilla run."""
    out, vanilla = [], {}
    for r in raw:
        setting, records = PilotSetting(r["setting"], SpecConfig.from_dict(r["config"])), records_from_raw(r["rounds"])
        row = result_row(r["prompt_index"], setting, r["prompt_tokens"], records, vanilla.get(r["prompt_index"]))
        row.update(greedy_check=r.get("greedy_check"), fp32_gap=r.get("fp32_gap"))  # made when it ran
        run = PilotRun(r["prompt_index"], setting, tuple(records), tuple(r["token_ids"]), row)
        if setting.config.mode == "vanilla":
            vanilla[r["prompt_index"]] = run
        out.append(run)
    return out


def acceptance_rows(raw: Sequence[dict], draft_len: int) -> list[dict]:
    """The acceptance table's rows from raw runs (`acceptance`'s "runs")."""
    rows = []
    for temperature in dict.fromkeys(r["temperature"] for r in raw):
        runs = _pilot_runs([r for r in raw if r["temperature"] == temperature])
        for s in summarise([r.row for r in runs]):
            if s["mode"] != "easyspec":
                continue
            mine = [r for r in runs if r.setting.label == s["setting"]]
            rows.append({"temperature": temperature, "layer_parallel": s["layer_parallel"],
                         "calibration": s["calibration"], "drafting": drafting(mine[0].setting.config),
                         "draft_len": draft_len, "prompts": s["prompts"],
                         "acceptance_rate": s["acceptance_rate"], "mean_accepted_length": s["mean_accepted_length"],
                         "per_position_acceptance": per_position(mine), "tokens_per_s": s["tokens_per_s"],
                         "speedup": s["speedup"], "draft_s": s["draft_s"], "calibrate_s": s["calibrate_s"],
                         "equal_to_vanilla": s["equal_to_vanilla"], "greedy_checks": _verdicts(s),
                         "memory_source": s["memory_source"],
                         "largest_run_peak_memory_mib": s["largest_run_peak_memory_mib"],
                         "largest_run_memory_growth_mib": s["largest_run_memory_growth_mib"]})
    for row in rows:  # relative drop against N = 1 with the same policy, drafting and temperature, same run
        ref = next(r for r in rows if r["layer_parallel"] == 1 and r["calibration"] == row["calibration"]
                   and r["temperature"] == row["temperature"] and r["drafting"] == row["drafting"])
        ar, ref_ar = row["acceptance_rate"], ref["acceptance_rate"]
        row["relative_drop"] = round(1 - ar / ref_ar, 4) if ar is not None and ref_ar else None
    return rows


def _hf_model(folder, dtype: str, share=None):
    """transformers' own model from a checkpoint folder, in `dtype`. With `share` (our Decoder of the same
    checkpoint, float, in `dtype`, unsharded) its parameters are views of our decoder's stacked weights
    instead of a second copy: the offline pair's fp32 base is about 7 GB, and two of them with the drafts
    at four precisions exceed this 24 GB machine (measured: 21.6 GB resident before the first run)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from ..models.loading import parse_dtype

    if share is None:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=parse_dtype(dtype)).eval()
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype))
    _share_weights(model, share)
    # RoPE's inverse frequencies are computed at construction, which ran on the meta device.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)
    try:  # as from_pretrained does: the checkpoint's generation defaults, where it has them
        model.generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        pass
    return model.eval()


def _share_weights(model, dec) -> None:
    """Point every parameter of transformers' model at the matching slice of our stacked weights
    (families.layer_parts: which checkpoint tensors each stacked weight holds, in order)."""
    from ..models.families import layer_parts

    def put(module, name: str, t) -> None:
        setattr(module, name, torch.nn.Parameter(t, requires_grad=False))

    w = dec.w
    put(model.model.embed_tokens, "weight", w.embed)
    put(model.model.norm, "weight", w.norm)
    put(model.lm_head, "weight", w.lm_head)
    for field, parts in layer_parts(dec.cfg).items():
        stacked = getattr(w, field)
        for i in range(dec.cfg.n_layers if stacked is not None else 0):
            start = 0
            for part in parts:
                path, name = f"model.layers.{i}.{part}".rsplit(".", 1)
                module = model.get_submodule(path)
                size = getattr(module, name).shape[0]
                put(module, name, stacked[i, start:start + size])
                start += size
    embed = model.model.embed_tokens
    if getattr(embed, "embed_scale", None) is not None and embed.embed_scale.is_meta:  # Gemma 3's sqrt(hidden)
        embed.embed_scale = torch.tensor(embed.scalar_embed_scale)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta and "rotary" not in n]
    assert not left, f"weights not shared with our decoder: {left[:3]}"


def _float_whole(dec):
    """Our decoder when transformers' model can share its weights (float, all layers, the checkpoint's own
    layout and vocabulary), else None."""
    if dec is None or dec.cfg.model_type == "phi3":  # Phi keeps q/k/v and gate/up fused
        return None
    return dec if isinstance(dec.w.wqkv, torch.Tensor) and dec.reduce is None else None


ASSISTANT_KEYS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


def _hf_assisted(base, draft, ids: list[int], max_new_tokens: int, eos: list[int], assistant: dict):
    """Greedy assisted generation with the given assistant settings. Returns (tokens, seconds)."""
    import torch

    for key, value in assistant.items():
        setattr(draft.generation_config, key, value)
    x = torch.tensor([ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = base.generate(x, attention_mask=torch.ones_like(x), assistant_model=draft, do_sample=False,
                            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0])
    seconds = time.perf_counter() - start
    return out[0, len(ids):].tolist(), seconds


def speed(session, prompts: Sequence[str], settings: dict[str, SpecConfig], repeats: int, max_new_tokens: int,
          with_transformers: bool = True, draft_len: int = 5, progress: Progress = logger.info,
          keep: list | None = None, assistant_dtypes: Sequence[str] = ()) -> dict:
    """Per setting: median tokens/s and median speedup over vanilla (per prompt and repeat), equality;
    "runs" holds every measured run's raw data, from which `speed_rows` computes the rows.
    `keep` receives a `PilotRun` per engine run (prompt index, repeat after repeat), for a report.
    assistant_dtypes: float precisions transformers' assistant also runs in (its base stays at the
    session's dtype); transformers has no int8/int4 weight-only assistant of its own."""
    if session.info.devices != 1 and with_transformers:
        raise ValueError("the comparison with transformers runs on one device: use --devices 1 or --no-transformers")
    prompt_ids = [session.encode(p, chat=True) for p in prompts]
    # Each runner returns (tokens, seconds, round records or None for transformers).
    runners: dict[str, Callable[[list[int]], tuple[list[int], float, list | None]]] = {}
    for label, cfg in settings.items():
        def run(ids, cfg=cfg):
            records = list(session.generate(session.plan(cfg, ids)))
            return [t for r in records for t in r.token_ids], records[-1].end_ns / 1e9, records
        runners[label] = run
    if with_transformers:
        hf_base = _hf_model(session.source.base_dir, session.info.dtype, share=_float_whole(session.base))
        eos = sorted(session.pair.eos_ids)
        fixed = {"num_assistant_tokens": draft_len, "num_assistant_tokens_schedule": "constant",
                 "assistant_confidence_threshold": 0.0}
        for dtype in dict.fromkeys((session.info.dtype, *assistant_dtypes)):
            hf_draft = _hf_model(session.source.draft_dir, dtype,
                                 share=_float_whole(session.draft) if dtype == session.draft_dtype else None)
            defaults = {key: getattr(hf_draft.generation_config, key) for key in ASSISTANT_KEYS}
            tag = "" if dtype == session.info.dtype else f" [{dtype} assistant]"
            for name, assistant in ((f"k={draft_len} constant", fixed), ("default", defaults)):
                runners[f"transformers assisted {name}{tag}"] = (
                    lambda ids, d=hf_draft, a=assistant: (*_hf_assisted(hf_base, d, ids, max_new_tokens, eos, a),
                                                          None))
    assert "vanilla" in runners, "the speed table needs vanilla as its reference"
    for run in runners.values():  # warm-up, not measured
        run(prompt_ids[0][:8])
    raw = []
    for i, ids in enumerate(prompt_ids):
        for rep in range(repeats):
            got = {}
            for label, run in runners.items():
                progress(f"speed: prompt {i + 1}/{len(prompt_ids)} repeat {rep + 1}/{repeats}: {label}")
                tokens, seconds, records = got[label] = run(ids)
                cfg = settings.get(label)
                raw.append({"prompt_index": i, "prompt": prompts[i], "repeat": rep, "setting": label,
                            "config": asdict(cfg) if cfg else None, "prompt_tokens": len(ids),
                            "token_ids": tokens, "seconds": seconds,
                            "rounds": raw_rounds(records) if records is not None else None})
            # The greedy check against vanilla's tokens of the same prompt and repeat (lossless.py): it
            # needs the base's weights, so it is made here and kept in the raw run; the rows count verdicts.
            check = {label: compare_greedy(session, ids, got[label][0], got["vanilla"][0]) for label in runners}
            for r in raw[-len(runners):]:
                r["greedy_check"] = check[r["setting"]].as_dict()
            if keep is not None:
                vanilla = None
                for label in sorted(settings, key=lambda x: settings[x].mode != "vanilla"):  # vanilla first:
                    cfg = settings[label]  # it is the rows' speedup reference
                    tokens, _, records = got[label]
                    setting = PilotSetting(label, cfg)
                    run = PilotRun(i, setting, tuple(records), tuple(tokens),
                                   result_row(i, setting, len(ids), records, vanilla, check[label]))
                    vanilla = run if cfg.mode == "vanilla" else vanilla
                    keep.append(run)
    return {"rows": speed_rows(raw), "prompts": list(prompts), "repeats": repeats,
            "max_new_tokens": max_new_tokens, "runs": raw}


def speed_rows(raw: Sequence[dict]) -> list[dict]:
    """The speed table's rows from raw runs (`speed`'s "runs"), settings in first-run order: rates are
    tokens / seconds per run, ratios against vanilla's run on the same prompt in the same repeat,
    equality from each prompt's first repeat, AR and AL over every round of the setting's runs."""
    vanilla = {(r["prompt_index"], r["repeat"]): r for r in raw if r["setting"] == "vanilla"}
    assert vanilla, "the speed table needs vanilla as its reference"
    rows = []
    for label in dict.fromkeys(r["setting"] for r in raw):
        mine = [r for r in raw if r["setting"] == label]
        rates = [len(r["token_ids"]) / r["seconds"] for r in mine]
        ratios = [rate / _rate(vanilla[r["prompt_index"], r["repeat"]]) for rate, r in zip(rates, mine)]
        verdicts = count_verdicts(r["greedy_check"]["verdict"] for r in mine if r["repeat"] == 0)
        rounds = [d for r in mine for d in (r["rounds"] or ()) if d["drafted"]]
        traced = [compute(records_from_raw(r["rounds"])) for r in mine if r["rounds"] is not None]
        precision = (mine[0]["config"] or {}).get("draft_dtype")  # only runs at a chosen draft precision have one
        rows.append({"setting": label, **({"draft_dtype": precision} if precision else {}),
                     "tokens_per_s_median": round(statistics.median(rates), 4),
                     "speedup_median": round(statistics.median(ratios), 4),
                     "speedup_min": round(min(ratios), 4), "speedup_max": round(max(ratios), 4),
                     "equal_to_vanilla": same_column(verdicts), "greedy_checks": verdicts, **ar_al(rounds),
                     **_memory(traced)})
    return rows


def _rate(run: dict) -> float:
    return len(run["token_ids"]) / run["seconds"]


def ar_al(rounds: Sequence[dict]) -> dict:
    """AR and AL over raw drafting rounds (None without drafts): accepted / drafted, tokens per round."""
    drafted = sum(len(d["drafted"]) for d in rounds)
    return {"acceptance_rate": round(sum(d["accepted"] for d in rounds) / drafted, 4) if drafted else None,
            "mean_accepted_length": round(sum(len(d["token_ids"]) for d in rounds) / len(rounds), 4)
            if rounds else None}


def rows_from_runs(kind: str, result: dict) -> list[dict]:
    """A results JSON's table rows recomputed from its raw runs alone ("acceptance" or "speed"), as
    plain JSON values (lists for tuples), so that they compare equal to the rows the file holds."""
    import json

    rows = acceptance_rows(result["runs"], result["meta"]["draft_len"]) if kind == "acceptance" \
        else speed_rows(result["runs"])
    return json.loads(json.dumps(rows))


def _memory(runs: Sequence) -> dict:
    """The largest run peak and growth above a run's start over a setting's measured runs (their Metrics;
    none for transformers' runs), and what they measure (metrics.memory_label)."""
    known = [m for m in runs if m.run_peak_memory_bytes]
    if not known:
        return {"memory_source": None, "largest_run_peak_memory_bytes": None, "largest_run_memory_growth_bytes": None}
    return {"memory_source": known[0].memory_source,
            "largest_run_peak_memory_bytes": max(m.run_peak_memory_bytes for m in known),
            "largest_run_memory_growth_bytes": max(m.run_memory_growth_bytes for m in known)}


def machine() -> str:
    import os
    import platform
    from pathlib import Path

    import torch

    cpu = platform.processor() or "cpu"
    info = Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}, {platform.system()}"


def git_commit() -> str:
    """Short hash of the checkout this package runs from ("unknown" outside a git checkout)."""
    import subprocess
    from pathlib import Path

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:
        return "unknown"


def pair_text(source, name: str | None) -> str:
    """A results file's pair: its folders, and what the named offline pair is (core/models/offline_pair.py)."""
    text = f"{source.base_name} (base) / {source.draft_name} (draft)"
    if name == "qwen2.5-coder":
        text += ": Qwen2.5-Coder-1.5B / 0.5B-Instruct, GGUF Q4_K_M dequantized to a bf16 safetensors cache"
    return text


def run_meta(command: str, started: str, info, args) -> dict:
    import platform

    import torch
    import transformers

    return {"command": command, "date": started, "machine": machine(), "commit": git_commit(),
            "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                         f"python {platform.python_version()}",
            "base": info.base, "draft": info.draft, "dtype": info.dtype, "device": info.device,
            "devices": info.devices, "draft_len": args.draft_len, "max_new_tokens": args.max_new_tokens,
            "prompts": args.prompts, "limit": args.limit,
            **({"draft_dtype": info.draft_dtype} if info.draft_dtype not in (None, info.dtype) else {})}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (tuple, list)):
        return " ".join(f"{x:.2f}" for x in v)
    return str(v)


def _bytes(n: int | None, shift: int, digits: int) -> str:
    return "-" if n is None else f"{n / 2**shift:.{digits}f}"


def markdown(kind: str, result: dict) -> str:
    meta = result["meta"]
    out = [f"# easyspec bench {kind}", "", f"- command: `{meta['command']}`", f"- date: {meta['date']}",
           f"- machine: {meta['machine']}", f"- commit: {meta['commit']}", f"- libraries: {meta['libraries']}",
           f"- pair: {meta['base']} / {meta['draft']}, {meta['dtype']}{_draft_note(meta)} on {meta['device']} x "
           f"{meta['devices']}; "
           f"k = {meta['draft_len']}; {meta['max_new_tokens']} new tokens; prompts: {meta['prompts']} "
           f"(first {meta['limit']}); chat template on", ""]
    if kind == "acceptance":
        out += ["AR = accepted / drafted; AL = tokens per drafting round (bonus/recovered included); drop = "
                "1 - AR / AR(N = 1, same policy, same run); per-position = acceptance of draft positions 1..k.", "",
                "| T | N | calibration | drafting | AR | AL | drop vs N=1 | per-position | same as vanilla |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['temperature']} | {r['layer_parallel']} | {r['calibration']} | {r.get('drafting', 'chain')} | "
                f"{_fmt(r['acceptance_rate'])} | "
                f"{_fmt(r['mean_accepted_length'])} | {_fmt(r['relative_drop'])} | "
                f"{_fmt(r['per_position_acceptance'])} | {_same(r)} |" for r in result["rows"]]
    else:
        source = next((r["memory_source"] for r in result["rows"] if r.get("memory_source")), "")
        out += [f"Medians over {result['repeats']} repeats per prompt after a warm-up; speedup = tokens/s over "
                "vanilla's in the same repeat on the same prompt (min..max across prompts and repeats); "
                "equality = prompts whose greedy tokens equal vanilla's, a rounding tie counted as equal and "
                "named (a difference that fp32 recomputation explains, core/engine/lossless.py); AR and AL (see "
                "`bench acceptance`) over every measured run of the setting (a tree's AR is per depth: accepted "
                f"path / tree depth); memory = {memory_label(source)}, and its growth above the run's start: the "
                "largest over the setting's measured runs (- for transformers' runs, not traced).", "",
                "| setting | tok/s | speedup | range | AR | AL | same as vanilla | run peak GiB | growth MiB |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['setting']} | {r['tokens_per_s_median']:.2f} | {r['speedup_median']:.2f}x | "
                f"{r['speedup_min']:.2f}..{r['speedup_max']:.2f} | {_fmt(r.get('acceptance_rate'))} | "
                f"{_fmt(r.get('mean_accepted_length'))} | {r['equal_to_vanilla']} | "
                f"{_bytes(r.get('largest_run_peak_memory_bytes'), 30, 2)} | "
                f"{_bytes(r.get('largest_run_memory_growth_bytes'), 20, 0)} |" for r in result["rows"]]
        if any(r.get("draft_dtype") for r in result["rows"]):
            out += ["", *precision_lines(result["rows"])]
    return "\n".join(out) + "\n"


TARGET_OVER_TRANSFORMERS, TARGET_OVER_VANILLA = 1.3, 1.5  # issue 21's target for easyspec's best precision


def precision_rows(rows: Sequence[dict]) -> list[dict]:
    """Per draft precision, its fastest easyspec setting against vanilla and transformers' fastest
    assisted configuration of the same run (ratio of median tokens/s), and its acceptance against the
    same setting with the float32 draft (the drop quantization caused)."""
    hf = [r for r in rows if r["setting"].startswith("transformers")]
    best_hf = max(hf, key=lambda r: r["tokens_per_s_median"]) if hf else None
    out = []
    for precision in dict.fromkeys(r["draft_dtype"] for r in rows if r.get("draft_dtype")):
        mine = [r for r in rows if r.get("draft_dtype") == precision and r["setting"].startswith("easyspec")]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["tokens_per_s_median"])
        ref = next((r for r in rows if r["setting"] == best["setting"].replace(f"[{precision}]", "[float32]")), None)
        ar, ref_ar = best["acceptance_rate"], ref["acceptance_rate"] if ref else None
        over_hf = round(best["tokens_per_s_median"] / best_hf["tokens_per_s_median"], 4) if best_hf else None
        equal = best["greedy_checks"]["different"] == 0
        out.append({"draft_dtype": precision, "setting": best["setting"], "tokens_per_s": best["tokens_per_s_median"],
                    "acceptance_rate": ar, "mean_accepted_length": best["mean_accepted_length"],
                    "acceptance_drop_vs_float32": round(1 - ar / ref_ar, 4) if ar is not None and ref_ar else None,
                    "speedup_over_vanilla": best["speedup_median"], "speedup_over_transformers": over_hf,
                    "transformers_best": best_hf["setting"] if best_hf else None,
                    "equal_to_vanilla": best["equal_to_vanilla"],
                    "target_met": bool(equal and over_hf is not None and over_hf >= TARGET_OVER_TRANSFORMERS
                                       and best["speedup_median"] >= TARGET_OVER_VANILLA)})
    return out


def precision_passed(rows: Sequence[dict]) -> bool:
    """Issue 21's criterion: some draft precision meets the target and no greedy output differs."""
    return any(r["target_met"] for r in precision_rows(rows)) and all(
        r["greedy_checks"]["different"] == 0 for r in rows)


def precision_lines(rows: Sequence[dict]) -> list[str]:
    """The draft-precision table and the target's verdict, from the speed rows."""
    per = precision_rows(rows)
    best_hf = per[0]["transformers_best"] if per else None
    lines = ["## Draft precision", "",
             f"Fastest easyspec setting per draft precision (the base stays at the run's dtype). Over transformers = "
             f"its median tok/s over that of transformers' fastest assisted configuration in this run "
             f"({best_hf or 'not run'}); AR drop = 1 - AR / AR of the same setting with the float32 draft. Target "
             f"(issue 21): at least {TARGET_OVER_TRANSFORMERS}x transformers' best assisted and at least "
             f"{TARGET_OVER_VANILLA}x vanilla, with every greedy output equal to vanilla's.", "",
             "| draft | setting | tok/s | over vanilla | over transformers | AR | AL | AR drop | same as vanilla | "
             "target |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['draft_dtype']} | {r['setting']} | {r['tokens_per_s']:.2f} | {r['speedup_over_vanilla']:.2f}x | "
              f"{_fmt(r['speedup_over_transformers'])}x | {_fmt(r['acceptance_rate'])} | "
              f"{_fmt(r['mean_accepted_length'])} | {_fmt(r['acceptance_drop_vs_float32'])} | "
              f"{r['equal_to_vanilla']} | {'met' if r['target_met'] else 'not met'} |" for r in per]
    met = [r["draft_dtype"] for r in per if r["target_met"]]
    lines += ["", f"Target {'met' if met else 'not met'}: " + (f"with the {', '.join(met)} draft." if met else
              "no draft precision reaches both ratios with equal outputs in this run.")]
    return lines


def _draft_note(meta: dict) -> str:
    return f" (draft {meta['draft_dtype']})" if meta.get("draft_dtype") else ""


def _same(row: dict) -> str:
    """An acceptance row's "same as vanilla" cell: the greedy checks' counts ("3/3 (1 tie)"), or yes/no/-."""
    counts = row.get("greedy_checks")
    return same_column(counts) if counts else _fmt(row["equal_to_vanilla"])


def write_results(out: str, kind: str, result: dict) -> None:
    import json
    from pathlib import Path

    from ..files import write_text_atomic

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    write_text_atomic(path.with_suffix(".json"), text)
    write_text_atomic(path.with_suffix(".md"), rebuild_markdown(kind, json.loads(text)))


def rebuild_markdown(kind: str, result: dict) -> str:
    """The Markdown table of a results JSON, its rows recomputed from the raw runs it holds."""
    return markdown(kind, {**result, "rows": rows_from_runs(kind, result)})
