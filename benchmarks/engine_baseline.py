"""First measurement of the engine on the real offline pair (issue: core engine).

Greedy decoding, fp32 and bf16, a handful of code and chat prompts (chat template on):
acceptance rate and mean accepted length for N = 1..4 with calibration none and every-round, and
tokens/s of vanilla vs speculative vs easyspec, all measured in this one process on this machine.
Writes results/engine_baseline.md and .json. Run: python benchmarks/engine_baseline.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import transformers

from easyspec.core import metrics
from easyspec.core.bench import git_commit, machine
from easyspec.core.engine import SpecConfig, Stopping, generate
from easyspec.core.files import write_text_atomic
from easyspec.core.loading import load_pair, resolve_pair
from easyspec.core.lossless import Fp32Reference, compare_greedy, count_verdicts, same_column
from easyspec.core.text import encode_prompt

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


def measure(dtype: str, max_new: int, draft_len: int) -> list[dict]:
    pair = load_pair(resolve_pair(pair="qwen2.5-coder"), dtype=dtype)
    base, draft = pair.base.decoder, pair.draft.decoder
    stopping = Stopping(pair.eos_ids)
    reference = Fp32Reference(base)  # classifies a difference from vanilla (fp32 copy built on first use)
    prompts = {name: encode_prompt(pair.tokenizer, text, chat=True) for name, text in PROMPTS.items()}
    list(generate(base, draft, prompts["chat: sky"], SpecConfig(max_new_tokens=8), stopping))  # warm-up
    rows = []
    for label, s in SETTINGS:
        cfg = SpecConfig(max_new_tokens=max_new, draft_len=draft_len, **s)
        per_prompt = {}
        for name, ids in prompts.items():
            records = list(generate(base, draft, ids, cfg, stopping))
            m = metrics.compute(records)
            per_prompt[name] = {"tokens": [t for r in records for t in r.token_ids], "metrics": m.as_dict()}
            print(f"{dtype} {label:28s} {name:22s} {m.tokens_per_s:6.2f} tok/s AR {m.acceptance_rate} "
                  f"AL {m.mean_accepted_length}", file=sys.stderr)
        rows.append({"setting": label, "dtype": dtype, **s, "prompts": per_prompt})
    vanilla = rows[0]["prompts"]
    for row in rows:
        ms = [p["metrics"] for p in row["prompts"].values()]
        drafted, accepted = sum(m["drafted"] for m in ms), sum(m["accepted"] for m in ms)
        rounds = sum(m["rounds"] for m in ms)
        row["acceptance_rate"] = accepted / drafted if drafted else None
        row["mean_accepted_length"] = (sum(m["new_tokens"] - 1 for m in ms) / rounds) if drafted else None
        row["tokens_per_s"] = sum(m["new_tokens"] for m in ms) / sum(m["total_s"] for m in ms)
        row["speedup_median"] = statistics.median(
            p["metrics"]["tokens_per_s"] / vanilla[n]["metrics"]["tokens_per_s"] for n, p in row["prompts"].items())
        for n, p in row["prompts"].items():
            p["greedy_check"] = compare_greedy(reference, prompts[n], p["tokens"], vanilla[n]["tokens"]).as_dict()
        row["same_as_vanilla"] = sum(p["tokens"] == vanilla[n]["tokens"] for n, p in row["prompts"].items())
        row["greedy_checks"] = count_verdicts(p["greedy_check"]["verdict"] for p in row["prompts"].values())
        row["draft_s"] = sum(m["draft_s"] for m in ms)
        row["calibrate_s"] = sum(m["calibrate_s"] for m in ms)
        row["verify_s"] = sum(m["verify_s"] for m in ms)
        row["memory_source"] = ms[0]["memory_source"]  # each run's own figures, the largest over the prompts
        row["largest_run_peak_memory_bytes"] = max(m["run_peak_memory_bytes"] for m in ms)
        row["largest_run_memory_growth_bytes"] = max(m["run_memory_growth_bytes"] for m in ms)
    del pair, reference
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    out = ["# Engine baseline: the offline pair on this machine", "",
           f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
           f"- commit: {meta['commit']}", f"- libraries: {meta['libraries']}",
           f"- pair: Qwen2.5-Coder-0.5B-Instruct (draft) / 1.5B-Instruct (base), GGUF Q4_K_M dequantized to a "
           f"bf16 safetensors cache; greedy; chat template; {meta['max_new_tokens']} new tokens; k = "
           f"{meta['draft_len']}; {len(PROMPTS)} prompts ({', '.join(PROMPTS)})",
           "- AR = accepted / drafted; AL = tokens emitted per drafting round (bonus/recovered included); "
           "tok/s = new tokens / wall time over all prompts (prefill included); speedup = median over prompts "
           "of tok/s ratio to vanilla in the same run; 'same' = prompts whose tokens equal vanilla's, a rounding tie "
           "counted and named: at the first differing token the base's logits, recomputed in fp32 from the same "
           "weights, put both tokens within the stated margin of the best (1e-5 in fp32; 4 bf16 units in the last "
           "place of the logit in bf16; core/lossless.py); any other difference is counted 'different' (a bug); "
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
        out += differences([r for r in rows if r["dtype"] == dtype])
    return "\n".join(out)


def differences(rows: list[dict]) -> list[str]:
    """Every prompt whose tokens differ from vanilla's: where, the two tokens, the fp32 margins, the verdict."""
    lines = [f"| {r['setting']} | {name} | {c['verdict']} | {c['index']} | {c['token']} vs {c['reference_token']} | "
             f"{_g(c['margin'])} | {_g(c['gap'])} | {_g(c['allowed'])} | {c['fp32_pick']} |"
             for r in rows for name, p in r["prompts"].items() if (c := p["greedy_check"])["verdict"] != "equal"]
    if not lines:
        return []
    return ["Differences from vanilla (new token index; tokens: this setting's vs vanilla's; margin = fp32 logit "
            "of the higher minus the other's; gap = fp32's top logit minus the lower of the two; allowed = the "
            "stated margin; fp32 pick = fp32's own greedy token):", "",
            "| setting | prompt | verdict | at token | tokens | margin | gap | allowed | fp32 pick |",
            "|---|---|---|---|---|---|---|---|---|", *lines, ""]


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--draft-len", type=int, default=5)
    ap.add_argument("--out", default="results/engine_baseline")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    rows = [row for dtype in dtypes for row in measure(dtype, args.max_new_tokens, args.draft_len)]
    meta = {"command": "python " + " ".join(sys.argv), "machine": machine(), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                         f"python {platform.python_version()}",
            "dtypes": dtypes, "max_new_tokens": args.max_new_tokens, "draft_len": args.draft_len}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_text_atomic(args.out + ".md", markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
