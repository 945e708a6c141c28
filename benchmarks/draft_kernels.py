"""Why a draft precision is fast or slow on this device: the real draft's forwards, timed per precision.

`bench speed --draft-dtypes` (results/bench_draft_precision.md) measures whole runs; this script times
the pieces a round is made of, on the offline pair's draft at each precision in one process, with the
same inputs: a one-token step (drafting), a step of k + 1 = 6 tokens (calibration) and a 64-token
prefill, each with a fresh cache of the context length before it. Medians of `--repeats` timings
after a warm-up; ratios against float32 in the same run.
Writes OUT.md and OUT.json. Run: python benchmarks/draft_kernels.py [--out results/draft_kernels]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import torch

from easyspec.app.logs import configure as configure_logging
from easyspec.core.evaluation.bench import git_commit, machine
from easyspec.core.files import write_text_atomic
from easyspec.core.models.loading import load_draft, resolve_pair
from easyspec.core.settings import DRAFT_DTYPES

STEPS = {"draft step (1 token)": 1, "calibration (6 tokens)": 6, "prefill (64 tokens)": 64}
CONTEXT = 256  # tokens already in the cache before the timed forward


def time_forward(draft, tokens: int, repeats: int) -> float:
    """Median seconds of one forward of `tokens` new tokens after CONTEXT cached ones."""
    ids = torch.randint(0, draft.cfg.vocab_size, (CONTEXT + tokens,), generator=torch.Generator().manual_seed(0))
    seconds = []
    with torch.inference_mode():
        cache = draft.new_cache(CONTEXT + tokens)
        draft.forward(ids[:CONTEXT], 0, cache)
        for i in range(repeats + 1):  # the first is the warm-up
            cache.crop(CONTEXT)
            start = time.perf_counter()
            draft.forward(ids[CONTEXT:], CONTEXT, cache)
            if i:
                seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default=",".join(p for p in DRAFT_DTYPES if p != "int4-g128"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="results/draft_kernels")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    source = resolve_pair(None, None, "qwen2.5-coder")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for precision in precisions:
        draft = load_draft(source.draft_dir, precision, torch.device("cpu"))
        rows.append({"precision": precision, **{step: time_forward(draft, n, args.repeats) for step, n in STEPS.items()}})
        del draft
    ref = next(r for r in rows if r["precision"] == "float32")
    result = {"meta": {"command": " ".join(["python", *sys.argv]), "date": started, "machine": machine(),
                       "commit": git_commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "draft": source.draft_name, "context": CONTEXT, "repeats": args.repeats}, "rows": rows}
    lines = [f"# The draft's forwards per precision ({source.draft_name}, CPU)", "",
             f"- command: `{result['meta']['command']}`", f"- date: {started}", f"- machine: {machine()}",
             f"- commit: {result['meta']['commit']}; torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             f"Median milliseconds of one forward after {CONTEXT} cached tokens ({args.repeats} timings after a "
             f"warm-up), and the ratio to float32 in the same run (above 1: slower).", "",
             "| precision | " + " | ".join(STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for r in rows:
        lines.append(f"| {r['precision']} | " + " | ".join(f"{1000 * r[s]:.1f} ms ({r[s] / ref[s]:.2f}x)"
                                                          for s in STEPS) + " |")
    slower = [r["precision"] for r in rows if r["precision"] != "float32"
              and r["draft step (1 token)"] > ref["draft step (1 token)"]]
    lines += ["", (f"On this device {', '.join(slower)} take longer than float32 for a one-token draft step: "
                   f"their kernels cost more than the bytes they save." if slower else
                   "No precision takes longer than float32 for a one-token draft step on this device."), ""]
    write_text_atomic(f"{args.out}.json", json.dumps(result, indent=1))
    write_text_atomic(f"{args.out}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
