"""Long-prompt prefill: the engine's vanilla prefill against transformers' own forward (issue 19, item 3).

    python benchmarks/long_prefill.py --tokens 4096,8192            # results/long_prefill.md and .json
    python benchmarks/long_prefill.py --tokens 31304 --repeats 1    # the long measurement (many minutes on a CPU)

For each prompt length and each implementation, a fresh subprocess loads the offline pair's base (bf16 by
default), reads one prompt of that many tokens and emits the first token: `easyspec` runs the engine
(`generate`, vanilla, one token: round 0 is the prefill), `transformers` runs the model's forward with
`logits_to_keep=1` (what its `generate` does for the prefill). Each child reports time to first token
(the forward and the pick, the model already loaded), its resident memory after loading, the peak resident
memory of the prefill (Linux's high-water mark VmHWM, reset after loading through /proc/self/clear_refs), the
peak of the whole process (ru_maxrss, loading included) and the first token, so that the two can be checked
to agree. A fresh process per measurement keeps each peak its own. The prompt is this repository's source
text, tokenized and cut to the length. What it is not: a decode-speed benchmark (engine_baseline.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("easyspec", "transformers")


def prompt_ids(tokenizer, n: int) -> list[int]:
    """n token ids of this repository's Python source (deterministic, code-like text)."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "core").rglob("*.py")))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def reset_peak() -> None:
    """Start the resident-memory high-water mark again from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_since_reset() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def child(impl: str, n: int, dtype: str, pair: str) -> dict:
    """One measurement in this process: load, prefill n tokens, report."""
    import torch

    from easyspec.core.engine.tracing import rss_bytes
    from easyspec.core.models.loading import load_tokenizer, parse_dtype, resolve_pair

    source = resolve_pair(pair=pair, with_draft=False)
    ids = prompt_ids(load_tokenizer(source.base_dir), n)
    with torch.inference_mode():
        if impl == "easyspec":
            from easyspec.core.engine.loop import generate
            from easyspec.core.models.loading import load_decoder
            from easyspec.core.planning import plan_run
            from easyspec.core.settings import SpecConfig

            base = load_decoder(source.base_dir, parse_dtype(dtype), torch.device("cpu"))
            plan = plan_run(SpecConfig(mode="vanilla", max_new_tokens=1), ids, base, None)
            loaded = rss_bytes()
            reset_peak()
            start = time.perf_counter()
            first = next(generate(base, None, plan)).token_ids[0]
            ttft = time.perf_counter() - start
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(source.base_dir, dtype=parse_dtype(dtype)).eval()
            loaded = rss_bytes()
            reset_peak()
            start = time.perf_counter()
            logits = model(torch.tensor([ids]), logits_to_keep=1).logits  # [1, 1, vocab]
            first = int(logits[0, -1].argmax())
            ttft = time.perf_counter() - start
    prefill_peak = peak_since_reset()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"impl": impl, "tokens": n, "ttft_s": ttft, "loaded_rss_bytes": loaded, "prefill_peak_rss_bytes": prefill_peak,
            "peak_rss_bytes": peak,
            "first_token": first, "threads": torch.get_num_threads()}


def run_child(impl: str, n: int, dtype: str, pair: str) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--tokens", str(n), "--dtype", dtype, "--pair", pair]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"{impl:12s} {n:6d} tokens: {result['ttft_s']:.2f} s, prefill peak {result['prefill_peak_rss_bytes'] / 1e9:.2f} "
          f"GB", 
          file=sys.stderr)
    return result


def summary(runs: list[dict]) -> list[dict]:
    """One row per (length, implementation): medians over the repeats."""
    rows = []
    for n in sorted({r["tokens"] for r in runs}):
        for impl in IMPLS:
            mine = [r for r in runs if r["tokens"] == n and r["impl"] == impl]
            if mine:
                rows.append({"tokens": n, "impl": impl, "repeats": len(mine),
                             "ttft_s": statistics.median(r["ttft_s"] for r in mine),
                             "prefill_peak_rss_gb": statistics.median(r["prefill_peak_rss_bytes"] for r in mine) / 1e9,
                             "peak_rss_gb": statistics.median(r["peak_rss_bytes"] for r in mine) / 1e9,
                             "loaded_rss_gb": statistics.median(r["loaded_rss_bytes"] for r in mine) / 1e9,
                             "first_tokens": sorted({r["first_token"] for r in mine})})
    return rows


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    out = ["# Long-prompt prefill: the engine against transformers' forward", "",
           f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ", f"Commit: {meta['commit']}  ",
           f"Date: {meta['date']}  ", f"Libraries: {meta['libraries']}  ", f"Model: {meta['model']}, {meta['dtype']}",
           "", "Each figure is the median over fresh subprocesses (one per measurement). Time to first token: the "
           "prefill forward and the pick, the model already loaded. RSS after load: before the prefill. Prefill peak: the "
           "highest RSS from the end of loading to the first token. Process peak: the whole process, loading "
           "included (transformers keeps its weights memory-mapped, so they count only as they are read).", "",
           "| prompt tokens | implementation | repeats | time to first token (s) | RSS after load (GB) "
           "| prefill peak RSS (GB) | process peak RSS (GB) | first token |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['tokens']} | {r['impl']} | {r['repeats']} | {r['ttft_s']:.2f} | {r['loaded_rss_gb']:.2f} | "
                   f"{r['prefill_peak_rss_gb']:.2f} | {r['peak_rss_gb']:.2f} | {', '.join(map(str, r['first_tokens']))} |")
    out += ["", "## Reading", ""]
    for n in sorted({r["tokens"] for r in rows}):
        ours = next((r for r in rows if r["tokens"] == n and r["impl"] == "easyspec"), None)
        theirs = next((r for r in rows if r["tokens"] == n and r["impl"] == "transformers"), None)
        if ours and theirs:
            speed = theirs["ttft_s"] / ours["ttft_s"]
            same = "the same first token" if ours["first_tokens"] == theirs["first_tokens"] else "different first tokens"
            out.append(f"- {n} tokens: the engine's prefill took {ours['ttft_s']:.2f} s against transformers' "
                       f"{theirs['ttft_s']:.2f} s ({speed:.2f}x transformers' speed); prefill peak RSS "
                       f"{ours['prefill_peak_rss_gb']:.2f} GB against {theirs['prefill_peak_rss_gb']:.2f} GB "
                       f"({ours['prefill_peak_rss_gb'] - theirs['prefill_peak_rss_gb']:+.2f} GB); process peak "
                       f"{ours['peak_rss_gb']:.2f} GB against {theirs['peak_rss_gb']:.2f} GB; {same}.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="4096,8192", help="prompt lengths, comma-separated")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--pair", default="qwen2.5-coder", help="the offline pair whose base runs")
    ap.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per length and implementation")
    ap.add_argument("--out", default="results/long_prefill")
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, int(args.tokens), args.dtype, args.pair)))
        return
    import torch
    import transformers

    from easyspec.core.evaluation.bench import git_commit, machine
    from easyspec.core.files import write_text_atomic

    lengths = [int(t) for t in args.tokens.split(",")]
    runs = [run_child(impl, n, args.dtype, args.pair) for n in lengths for _ in range(args.repeats) for impl in IMPLS]
    meta = {"command": shlex.join(["python", "benchmarks/long_prefill.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                         f"python {platform.python_version()}",
            "model": f"{args.pair}/base (Qwen2.5-Coder-1.5B-Instruct)", "dtype": args.dtype}
    result = {"meta": meta, "runs": runs, "rows": summary(runs)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps(result, indent=1))
    write_text_atomic(args.out + ".md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
