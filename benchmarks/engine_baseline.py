"""First measurement of the engine on the real offline pair (issue: core engine).

Greedy decoding, fp32 and bf16, a handful of code and chat prompts (chat template on):
acceptance rate and mean accepted length for N = 1..4 with calibration none and every-round, and
tokens/s of vanilla vs speculative vs easyspec, all measured in this one process on this machine.
The JSON keeps every run's raw data ("runs": prompt, settings, token ids, every round, wall seconds)
and its meta; the rows and the Markdown table are computed from those runs (`rows_from_runs`).
Writes results/engine_baseline.md and .json. Run: python benchmarks/engine_baseline.py
What it is not: part of the test suite, or a multi-device measurement (`devices_cpu.py`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch
import transformers

from easyspec.app.logs import configure as configure_logging
from easyspec.core.engine import metrics
from easyspec.core.evaluation.bench import ar_al, git_commit, machine, pair_text, raw_run, records_from_raw
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import Stopping, generate
from easyspec.core.settings import SpecConfig
from easyspec.core.files import write_text_atomic
from easyspec.core.models.loading import load_pair, resolve_pair
from easyspec.core.engine.lossless import Fp32Reference, compare_greedy
from easyspec.core.engine.verdicts import count_verdicts, same_column
from easyspec.core.models.text import encode_prompt

PROMPTS = {
    "code: prime": "Write a Python function that checks whether a number is prime.",
    "code: csv": "Write a Python function that reads a CSV file and returns the average of the 'price' column.",
    "code: binary search": "Implement binary search in Python with a docstring and type hints.",
    "chat: sky": "Explain in three sentences why the sky is blue.",
    "chat: email": "Write a short, polite email asking a colleague to review my pull request.",
}
SETTINGS = [("vanilla", {"mode": "vanilla"}), ("speculative", {"mode": "speculative"})] + [
    (f"easyspec N={n} {c}", {"mode": "easyspec", "layer_parallel": n, "calibration": c})
    for c in ("none", "every-round") for n in (1, 2, 3, 4)]


def measure(source, dtype: str, max_new: int, draft_len: int, prompts: dict[str, str]) -> list[dict]:
    """Every setting on every prompt: one raw run each (`bench.raw_run`)."""
    pair = load_pair(source, dtype=dtype)
    base, draft = pair.base.decoder, pair.draft.decoder
    stopping = Stopping(pair.eos_ids)
    reference = Fp32Reference(base)  # classifies a difference from vanilla (fp32 copy built on first use)
    ids = {name: encode_prompt(pair.tokenizer, text, chat=True) for name, text in prompts.items()}
    list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=8), next(iter(ids.values())), base, draft),
                  stopping))  # warm-up
    raw = []
    for label, s in SETTINGS:
        cfg = SpecConfig(max_new_tokens=max_new, draft_len=draft_len, **s)
        for name, prompt_ids in ids.items():
            records = list(generate(base, draft, plan_run(cfg, prompt_ids, base, draft), stopping))
            m = metrics.compute(records)
            raw.append(raw_run(records, dtype=dtype, setting=label, settings=s, prompt=name,
                               prompt_text=prompts[name], prompt_ids=prompt_ids))
            print(f"{dtype} {label:28s} {name:22s} {m.tokens_per_s:6.2f} tok/s AR {m.acceptance_rate} "
                  f"AL {m.mean_accepted_length}", file=sys.stderr)
    # Each run's greedy check against vanilla's run of the same prompt (core/engine/lossless.py): needs the
    # base's weights, so it is made here and kept in the raw run; the table only counts the verdicts.
    vanilla = {r["prompt"]: r["token_ids"] for r in raw if r["setting"] == "vanilla"}
    for r in raw:
        check = compare_greedy(reference, ids[r["prompt"]], r["token_ids"], vanilla[r["prompt"]])
        r["greedy_check"] = check.as_dict()
    del pair, reference
    return raw


def rows_from_runs(raw: list[dict]) -> list[dict]:
    """One row per (dtype, setting) from the raw runs: AR and AL over the drafting rounds, tok/s over
    all prompts (prefill included), per-phase seconds, median tok/s ratio to vanilla's run on the
    same prompt, prompts whose tokens equal vanilla's and the greedy checks' counts, the largest run
    peak memory and growth over the prompts."""
    rows = []
    for dtype, label in dict.fromkeys((r["dtype"], r["setting"]) for r in raw):
        mine = [r for r in raw if r["dtype"] == dtype and r["setting"] == label]
        vanilla = {r["prompt"]: r for r in raw if r["dtype"] == dtype and r["setting"] == "vanilla"}
        ms = {r["prompt"]: metrics.compute(records_from_raw(r["rounds"])) for r in mine}
        drafting = [d for r in mine for d in r["rounds"] if d["drafted"] and d["index"] > 0]
        vanilla_rate = {n: metrics.compute(records_from_raw(v["rounds"])).tokens_per_s for n, v in vanilla.items()}
        counts = ar_al(drafting)
        rows.append({"setting": label, "dtype": dtype, **mine[0]["settings"], "prompts": len(mine),
                     **counts,
                     "tokens_per_s": round(sum(m.new_tokens for m in ms.values())
                                           / sum(m.total_s for m in ms.values()), 4),
                     "speedup_median": round(statistics.median(m.tokens_per_s / vanilla_rate[n]
                                                               for n, m in ms.items()), 4),
                     "same_as_vanilla": sum(r["token_ids"] == vanilla[r["prompt"]]["token_ids"] for r in mine),
                     "greedy_checks": count_verdicts(r["greedy_check"]["verdict"] for r in mine),
                     **{f"{p}_s": round(sum(getattr(m, f"{p}_s") for m in ms.values()), 4)
                        for p in ("draft", "calibrate", "verify")},
                     # each run's own figures (metrics.memory_label says what they are), the largest over the prompts
                     "memory_source": next(iter(ms.values())).memory_source,
                     "largest_run_peak_memory_bytes": max(m.run_peak_memory_bytes for m in ms.values()),
                     "largest_run_memory_growth_bytes": max(m.run_memory_growth_bytes for m in ms.values())})
    return rows


def markdown(rows: list[dict], meta: dict, runs: list[dict]) -> str:
    out = ["# Engine baseline: the offline pair on this machine", "",
           f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
           f"- commit: {meta['commit']}", f"- libraries: {meta['libraries']}",
           f"- pair: {meta['pair']}; greedy; chat template; {meta['max_new_tokens']} new tokens; k = "
           f"{meta['draft_len']}; {len(meta['prompts'])} prompts ({', '.join(meta['prompts'])})",
           "- AR = accepted / drafted; AL = tokens emitted per drafting round (bonus/recovered included); "
           "tok/s = new tokens / wall time over all prompts (prefill included); speedup = median over prompts "
           "of tok/s ratio to vanilla in the same run; 'same' = prompts whose tokens equal vanilla's, a rounding tie "
           "counted and named: at the first differing token the base's logits, recomputed in fp32 from the same "
           "weights, put both tokens within the stated margin of the best (1e-5 in fp32; 4 bf16 units in the last "
           "place of the logit in bf16; core/engine/lossless.py); any other difference is counted 'different' (a bug); "
           f"run peak = {metrics.memory_label(rows[0]['memory_source'])}, growth = its growth above the run's start "
           "(both the largest over the prompts' runs).", ""]
    for dtype in meta["dtypes"]:
        out += [f"## {dtype}", "", "| setting | AR | AL | tok/s | speedup vs vanilla | draft s | calibrate s | "
                "verify s | same as vanilla | run peak GiB | growth MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["dtype"] == dtype):
            ar = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
            al = "-" if r["mean_accepted_length"] is None else f"{r['mean_accepted_length']:.2f}"
            out.append(f"| {r['setting']} | {ar} | {al} | {r['tokens_per_s']:.2f} | {r['speedup_median']:.2f}x | "
                       f"{r['draft_s']:.1f} | {r['calibrate_s']:.1f} | {r['verify_s']:.1f} | "
                       f"{same_column(r['greedy_checks'])} | {r['largest_run_peak_memory_bytes'] / 2**30:.2f} | "
                       f"{r['largest_run_memory_growth_bytes'] / 2**20:.0f} |")
        out.append("")
        out += differences([r for r in runs if r["dtype"] == dtype])
    return "\n".join(out)


def differences(runs: list[dict]) -> list[str]:
    """Every run whose tokens differ from vanilla's: where, the two tokens, the fp32 margins, the verdict."""
    lines = [f"| {r['setting']} | {r['prompt']} | {c['verdict']} | {c['index']} | {c['token']} vs "
             f"{c['reference_token']} | {_g(c['margin'])} | {_g(c['gap'])} | {_g(c['allowed'])} | {c['fp32_pick']} |"
             for r in runs if (c := r["greedy_check"])["verdict"] != "equal"]
    if not lines:
        return []
    return ["Differences from vanilla (new token index; tokens: this setting's vs vanilla's; margin = fp32 logit "
            "of the higher minus the other's; gap = fp32's top logit minus the lower of the two; allowed = the "
            "stated margin; fp32 pick = fp32's own greedy token):", "",
            "| setting | prompt | verdict | at token | tokens | margin | gap | allowed | fp32 pick |",
            "|---|---|---|---|---|---|---|---|---|", *lines, ""]


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def rebuild_markdown(result: dict) -> str:
    """The Markdown of a results JSON, its rows recomputed from the raw runs it holds."""
    return markdown(rows_from_runs(result["runs"]), result["meta"], result["runs"])


def main(argv: list[str] | None = None) -> None:
    configure_logging()  # core's progress (the offline pair's first preparation) on stderr
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--draft-len", type=int, default=5)
    ap.add_argument("--pair", default=None, help="a named offline pair (default qwen2.5-coder)")
    ap.add_argument("--base", help="base model folder or id (with --draft, instead of --pair)")
    ap.add_argument("--draft")
    ap.add_argument("--limit", type=int, default=len(PROMPTS), help=f"the first LIMIT prompts (default {len(PROMPTS)})")
    ap.add_argument("--out", default="results/engine_baseline")
    args = ap.parse_args(argv)
    dtypes = args.dtypes.split(",")
    prompts = dict(list(PROMPTS.items())[: max(1, args.limit)])
    source = resolve_pair(args.base, args.draft, args.pair or (None if args.base else "qwen2.5-coder"))
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    raw = [run for dtype in dtypes for run in measure(source, dtype, args.max_new_tokens, args.draft_len, prompts)]
    meta = {"command": shlex.join(["python", "benchmarks/engine_baseline.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "commit": git_commit(), "date": date,
            "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                         f"python {platform.python_version()}",
            "pair": pair_text(source, args.pair or (None if args.base else "qwen2.5-coder")),
            "dtypes": dtypes, "max_new_tokens": args.max_new_tokens, "draft_len": args.draft_len,
            "prompts": list(prompts)}
    result = {"meta": meta, "runs": raw}
    result = json.loads(json.dumps({**result, "rows": rows_from_runs(raw)}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps(result, indent=1))
    write_text_atomic(args.out + ".md", rebuild_markdown(result))
    print(rebuild_markdown(result))


if __name__ == "__main__":
    main()
