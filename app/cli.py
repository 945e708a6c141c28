"""The `easyspec` command line: `generate`, `tune` (layer plan and calibration), `bench`, `project`, `app`, `cache`.

Every command consumes the engine's one record stream (`core.engine.loop.generate`). Bad input ends in
one readable line on stderr and exit status 2, never a traceback (EASYSPEC_DEBUG=1 shows one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

from .logs import configure as configure_logging

EXIT_USAGE = 2
ON_LOW_HELP = ("warn | fallback (default warn): when the rolling acceptance rate stays under the alert line for 4 "
               "rounds, fallback drafts sequentially (N = 1, every-round calibration) from then on, and stops "
               "drafting if that is slower per token than the base alone; the output stays the same")
DRAFT_DTYPE_HELP = ("the draft's own precision, independent of the base's --dtype: float32 | bfloat16 | int8 | int4 | "
                    "int4-g128 (int8/int4: weight-only quantized linears, cached beside the model; default: --dtype)")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with vanilla, speculative or EasySpec decoding",
                       description="Generate text. Defaults: the offline qwen2.5-coder pair, easyspec, "
                                   "N=4, every-round calibration, k=5, greedy.")
    src = p.add_argument_group("models")
    src.add_argument("--pair", help="a named offline pair (qwen2.5-coder); the default when no --base is given")
    src.add_argument("--base", help="base model: Hugging Face id or local checkpoint folder")
    src.add_argument("--draft", help="draft model: Hugging Face id or local checkpoint folder")
    src.add_argument("--dtype", default="float32", help="float32 | bfloat16 (default float32)")
    src.add_argument("--draft-dtype", default=None, help=DRAFT_DTYPE_HELP)
    src.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    src.add_argument("--memory-budget-mb", type=float, default=None,
                     help="refuse a run whose KV caches would exceed this many MB, as an out-of-memory error")
    src.add_argument("--devices", type=int, default=1,
                     help="G ranks: the base tensor-parallel over G devices, the draft's fuzzy groups across them "
                          "(CPU: G gloo processes; under torchrun, the number of ranks it started)")
    inp = p.add_argument_group("prompt")
    inp.add_argument("--prompt", help="the prompt text")
    inp.add_argument("--prompt-file", help="read the prompt from this UTF-8 text file")
    inp.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    gen = p.add_argument_group("decoding")
    gen.add_argument("--mode", default="easyspec", help="vanilla | speculative | easyspec")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--draft-len", type=int, default=5, help="draft tokens per round, k")
    gen.add_argument("--layer-parallel", type=int, default=None,
                     help="layer-parallel size N (easyspec; default 4, at most --devices when G > 1)")
    gen.add_argument("--sequential-head", type=int, default=1, help="first draft layers kept sequential")
    gen.add_argument("--sequential-tail", type=int, default=1, help="last draft layers kept sequential")
    gen.add_argument("--groups", default="", help="explicit draft layer plan, e.g. '0|1-4|5-8|...|23' (replaces N, "
                                                  "head and tail), or 'auto' for the plan `easyspec tune` chose")
    gen.add_argument("--calibration", default="auto",
                     help="none | every-round | on-mismatch | auto (default: the tuned policy with --groups auto, "
                          "else every-round)")
    gen.add_argument("--on-low-acceptance", default="warn", help=ON_LOW_HELP)
    _add_drafting(gen)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0 turns top-k off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print exactly one JSON line on stdout")
    out.add_argument("--check-lossless", action="store_true",
                     help="also run vanilla decoding and report whether the tokens are identical (greedy only); a "
                          "difference is classified as a rounding tie or a real difference (a bug)")
    out.add_argument("--save-run", help="write the per-round records to this JSON Lines file (replayable)")
    out.add_argument("--trace", help="write a Chrome Trace Event JSON of every rank's timeline (opens in Perfetto)")


def _add_drafting(group, bench: bool = False) -> None:
    """--tree-depth, --tree-width and --adaptive (bench: variants added next to every chain setting)."""
    also = "also run every drafting setting with " if bench else ""
    group.add_argument("--tree-depth", type=int, default=0,
                       help=f"{also}a token tree of this depth instead of a chain of --draft-len tokens "
                            "(0: chain; greedy: top-width children per leaf, best width leaves kept per level; "
                            "sampling: width i.i.d. children of the root, verified by SpecInfer's multi-step "
                            "speculative sampling)")
    group.add_argument("--tree-width", type=int, default=4, help="leaves kept per tree level (default 4)")
    group.add_argument("--adaptive", action="store_true",
                       help=f"{also}adaptive draft length / tree depth: +2 after a fully accepted round, -1 after "
                            "a rejection, early stop when the draft's probability falls under 0.4")


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="serve the dashboard (Generate, Compare, Pilot, How it works) in a browser",
                       description="Serve the EasySpec Studio dashboard on one engine session (models loaded once).")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; any other needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help="confirm that other machines may connect (needed for a non-loopback --host or --share true)")
    p.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                   help="require a login (repeatable); prefer --auth-file, command lines are visible to other users")
    p.add_argument("--auth-file", help="require a login: a UTF-8 file with one USER:PASSWORD per line")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a multi-device collective may wait for a rank before the run fails (default 60)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="refuse a run whose KV caches would exceed this many MB, as an out-of-memory error")
    p.add_argument("--max-sessions", type=int, default=200,
                   help="browser sessions kept in memory, each with its latest figures and tables (default 200; "
                        "the least recently used is dropped beyond it)")
    p.add_argument("--devices", type=int, default=1, help="G devices (ranks) for the session; shown read-only")
    p.add_argument("--pair", help="a configured offline pair (default qwen2.5-coder)")
    p.add_argument("--base", help="custom base model id or folder (needs --allow-custom-models)")
    p.add_argument("--draft", help="custom draft model id or folder (needs --allow-custom-models)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (default float32)")
    p.add_argument("--draft-dtype", default=None, help=DRAFT_DTYPE_HELP)
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--allow-custom-models", action="store_true", help="allow --base/--draft instead of a named pair")
    p.add_argument("--on-low-acceptance", default="warn", help=ON_LOW_HELP + " (the Generate screen's default)")
    p.add_argument("--share", choices=("true", "false"), default="false",
                   help="ask Gradio for a public share link (needs internet; default false)")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (gpu: per-phase latencies of random-weight Qwen2.5 shapes)")
    bench = p.add_subparsers(dest="bench_command", required=True)
    g = bench.add_parser("gpu", help="draft/verify/calibration/vanilla latencies on one device, eager and CUDA graphs",
                         description="Build random-weight models in the shapes of Qwen2.5-0.5B/1.5B/7B directly on "
                                     "the device and time the forwards of a round (medians after warm-up). Prints "
                                     "a table last and writes the full JSON to --out. Needs torch only.")
    g.add_argument("--presets", default="qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-7b",
                   help="comma-separated shapes: qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, tiny; every smaller one "
                        "drafts for every larger one (a lone preset is its own draft)")
    g.add_argument("--device", default="cuda", help="cuda[:index] | cpu (default cuda)")
    g.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU) | bfloat16 | float16 | float32")
    g.add_argument("--repeats", type=int, default=100, help="timed repeats per forward (default 100)")
    g.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per forward (default 10)")
    g.add_argument("--draft-len", type=int, default=5, help="k: verify k+1 tokens, calibrate 1..k+1 (default 5)")
    g.add_argument("--context", type=int, default=512, help="tokens already in the cache (default 512)")
    g.add_argument("--layer-parallel", default="2,3,4", help="fuzzy group sizes N besides N=1 (default 2,3,4)")
    g.add_argument("--no-cuda-graphs", action="store_true", help="eager only")
    g.add_argument("--time-budget-s", type=float, default=200.0,
                   help="stop adding measurements near this many seconds (default 200)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="results/gpu_bench", help="folder for gpu_bench_<cuda|cpu>.json")
    for name, text in (("acceptance", "acceptance rate, mean accepted length and per-position acceptance per "
                                      "(N, calibration policy), greedy and sampled, and the drop against N = 1"),
                       ("speed", "tokens/s of vanilla, speculative and easyspec against transformers' assisted "
                                 "generation with the same pair, in one process")):
        b = bench.add_parser(name, help=text, description=text.capitalize() + ".")
        b.add_argument("--pair", default=None, help="a named offline pair (default qwen2.5-coder)")
        b.add_argument("--base")
        b.add_argument("--draft")
        b.add_argument("--dtype", default="float32")
        b.add_argument("--draft-dtype", default=None, help=DRAFT_DTYPE_HELP)
        b.add_argument("--device", default="cpu")
        b.add_argument("--devices", type=int, default=1)
        b.add_argument("--prompts", default="code", help="a built-in set (code, chat, math, summarisation), several "
                                                          "comma-separated, or a JSONL/CSV file with a prompt column")
        b.add_argument("--limit", type=int, default=4, help="use the first LIMIT prompts of each set (default 4)")
        b.add_argument("--layer-parallel", default="1,2,3,4,5" if name == "acceptance" else "4")
        b.add_argument("--calibration", default="none,every-round,on-mismatch" if name == "acceptance"
                       else "every-round")
        b.add_argument("--draft-len", type=int, default=5)
        _add_drafting(b, bench=True)
        b.add_argument("--max-new-tokens", type=int, default=32)
        b.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
        b.add_argument("--out", default=f"results/bench_{name}", help="writes OUT.json and OUT.md")
        b.add_argument("--report", help="also write the pilot report (one self-contained HTML file) here")
        b.add_argument("--report-lang", default="en", choices=("en", "ja"), help="the report's language (default en)")
        if name == "acceptance":
            b.add_argument("--temperatures", default="0,0.8")
        else:
            b.add_argument("--repeats", type=int, default=3)
            b.add_argument("--draft-dtypes", default="",
                           help="comma-separated draft precisions: every drafting setting runs at each (rows per "
                                "precision), and transformers' assistant in bfloat16 too when it is listed")
            b.add_argument("--no-transformers", action="store_true", help="skip transformers' assisted generation")


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="auto-tune the draft's layer plan and calibration policy for a model pair",
                       description="Measure hidden-state similarity and the acceptance of candidate layer plans on "
                                   "a few calibration prompts (greedy), choose the plan with the fewest sequential "
                                   "draft steps whose acceptance rate stays within --tolerance of N = 1, compare "
                                   "the calibration policies on it, and cache the result for --groups auto.")
    p.add_argument("--pair", default=None, help="a named offline pair (default qwen2.5-coder)")
    p.add_argument("--base")
    p.add_argument("--draft")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts", default="code", help="a built-in set (code, chat, math, summarisation) "
                                                      "or a JSONL/CSV file with a prompt column")
    p.add_argument("--limit", type=int, default=8, help="use the first LIMIT prompts (default 8: the search sees "
                                                       "half of them, the acceptance is measured on the other half)")
    p.add_argument("--chat", action="store_true", help="wrap the prompts in the chat template")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="relative acceptance-rate loss allowed against N = 1 (default 0.05)")
    p.add_argument("--max-group", type=int, default=8, help="largest group (at most G on G devices; default 8)")
    p.add_argument("--draft-len", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--no-policies", action="store_true", help="skip measuring the calibration policies")
    p.add_argument("--search", type=int, default=120,
                   help="probes the boundary search may spend improving the candidates (0: none; default 120)")
    p.add_argument("--probe-rounds", type=int, default=256,
                   help="simulated drafting rounds per probe (default 256)")
    p.add_argument("--exhaustive", action="store_true",
                   help="measure every candidate plan, also those with more steps than the one chosen")
    p.add_argument("--no-holdout", action="store_true",
                   help="search and measure on the same prompts (default: the search sees half of them and the "
                        "acceptance is measured on the other half, which keeps the choice honest)")
    p.add_argument("--out", default=None, help="also write OUT.json and OUT.md")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")


def _add_project(sub) -> None:
    p = sub.add_parser("project", help="projected tokens/s of vanilla, speculative and EasySpec decoding on a cluster",
                       description="A hardware model, not a measurement (docs/projection.md): bytes and FLOPs "
                                   "from the models' shapes, datasheet bandwidth and compute, efficiencies fitted "
                                   "to published batch-1 speeds (results/projection_check.md).")
    p.add_argument("--hardware", required=True,
                   help="a100-40gb | a100-80gb | h100-sxm | h100-pcie | h200 | l40s | b200, or a device .json/.toml")
    p.add_argument("--devices", type=int, default=8, help="G devices: the base at TP = G (default 8)")
    p.add_argument("--base", required=True, help="a model preset (e.g. llama-3.1-70b) or a config.json path")
    p.add_argument("--draft", help="a model preset or config.json (default: the base's first preset draft)")
    p.add_argument("--context", type=int, default=1024, help="tokens in the KV cache (default 1024)")
    p.add_argument("--draft-len", type=int, default=5, help="k (default 5)")
    p.add_argument("--layer-parallel", type=int, default=None, help="N, at most G (default 4, or G when G < 4)")
    p.add_argument("--accepted-length", type=float, default=None,
                   help="mean accepted length AL of speculative decoding, measured by a pilot (default 3.5, assumed)")
    p.add_argument("--easyspec-accepted-length", type=float, default=None,
                   help="AL of easyspec decoding if it differs (default: --accepted-length)")
    p.add_argument("--tree-width", type=int, default=0, help="draft a token tree this wide (0: a chain)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--graphs", dest="graphs", action="store_true", default=True,
                      help="CUDA graphs: one replay per forward (default)")
    mode.add_argument("--eager", dest="graphs", action="store_false", help="eager: one launch per kernel")
    p.add_argument("--batch", type=int, default=1, help="B sequences decoded together (default 1)")
    p.add_argument("--json", action="store_true", help="print the projection as one JSON line")


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="show or clear the converted offline-model cache")
    p.add_argument("action", choices=("info", "clear"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easyspec", description="EasySpec layer-parallel speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_cache(sub)
    _add_app(sub)
    _add_bench(sub)
    _add_tune(sub)
    _add_project(sub)
    return parser


def _read_prompt(args) -> str:
    if (args.prompt is None) == (args.prompt_file is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-file FILE")
    text = args.prompt
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise ValueError(f"--prompt-file {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"--prompt-file {path}: not UTF-8 text") from None
    if not text.strip():
        raise ValueError("the prompt is empty: give some text to continue")
    return text


def _configs(args):
    from easyspec.core.settings import SamplingConfig, SpecConfig, check_draft_dtype

    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1; got {args.devices}")
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    spec = SpecConfig(mode=args.mode, draft_len=args.draft_len, layer_parallel=args.layer_parallel,
                      sequential_head=args.sequential_head, sequential_tail=args.sequential_tail,
                      calibration=args.calibration, max_new_tokens=args.max_new_tokens, sampling=sampling,
                      stop_strings=tuple(args.stop), groups=args.groups.strip(), tree_depth=args.tree_depth,
                      tree_width=args.tree_width, adaptive=args.adaptive, on_low_acceptance=args.on_low_acceptance)
    if args.check_lossless and not sampling.greedy:
        raise ValueError("--check-lossless compares greedy outputs token for token: it needs --temperature 0")
    if args.base is None and args.draft is not None:
        raise ValueError("--draft needs --base")
    if args.draft_dtype is not None:
        check_draft_dtype(args.draft_dtype)
    return spec


def cmd_generate(args) -> int:
    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.runtime.ranks import launched_by_torchrun, run_follower
    from easyspec.core.session import Session

    if launched_by_torchrun() and args.devices == 1:
        args.devices = int(os.environ["WORLD_SIZE"])
    spec = _configs(args)
    prompt = _read_prompt(args)
    pair_name = args.pair or (None if args.base else "qwen2.5-coder")
    source = resolve_pair(args.base, args.draft, pair_name, with_draft=spec.mode != "vanilla")
    if launched_by_torchrun() and int(os.environ["RANK"]) != 0:  # torchrun: ranks > 0 follow rank 0
        run_follower(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", source, args.dtype,
                     args.device, 60.0, args.draft_dtype)
        return 0
    with Session(source, args.dtype, args.device, args.devices, memory_budget_mb=args.memory_budget_mb,
                 draft_dtype=args.draft_dtype) as session:
        return _generate_in(session, spec, prompt, args)


def _generate_in(session, spec, prompt: str, args) -> int:
    from easyspec.core.engine import metrics
    from easyspec.core.engine.chrome_trace import write_chrome_trace
    from easyspec.core.engine.grouping import describe, largest_group
    from easyspec.core.engine.lossless import compare_greedy
    from easyspec.core.engine.monitor import ALERT, OFF, SEQUENTIAL, fallback_summary, low_acceptance
    from easyspec.core.engine.records import save_run
    from easyspec.core.models.text import TextStream
    from easyspec.core.settings import SpecConfig

    prompt_ids = session.encode(prompt, args.chat)
    records = []
    stream = TextStream(session.tokenizer)
    run_plan = session.plan(spec, prompt_ids)  # the one resolution: auto, N, the policy, every limit
    spec, plan = run_plan.settings, run_plan.layers
    run = session.generate(run_plan)
    if plan:
        applied = f" ({', '.join(run_plan.applied)})" if run_plan.applied else ""
        print(f"easyspec: draft layer plan {describe(plan)}, calibration {spec.calibration}{applied}", file=sys.stderr)
    alerted = False
    for rec in run:
        records.append(rec)
        if ALERT in rec.flags and not alerted:
            alerted = True
            alert = low_acceptance(records, spec.as_dict(), largest_group(plan) if plan else 1)
            print(f"\neasyspec: warning: {alert.message}", file=sys.stderr)
        if SEQUENTIAL in rec.flags or OFF in rec.flags:
            what = "sequential drafting (N = 1, every-round calibration)" if SEQUENTIAL in rec.flags else \
                "no drafting: sequential drafting was slower per token than the base alone"
            print(f"\neasyspec: fallback after round {rec.index}: {what} from now on", file=sys.stderr)
        piece = stream.push(rec.token_ids, final=rec.stop is not None)
        if not args.json and piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if not args.json:
        sys.stdout.write(stream.push([], final=True) + "\n")
    m = metrics.compute(records)
    token_ids = list(stream.ids)
    info = session.info
    result = {"text": stream.text(), "token_ids": token_ids, "mode": spec.mode, "settings": run_plan.as_dict(),
              "base": info.base, "draft": info.draft, "dtype": info.dtype, "device": info.device,
              "devices": info.devices, "draft_dtype": info.draft_dtype, "prompt_tokens": len(prompt_ids),
              "stop": records[-1].stop,
              "metrics": m.as_dict()}
    if args.check_lossless:
        vanilla = SpecConfig(mode="vanilla", max_new_tokens=spec.max_new_tokens, stop_strings=spec.stop_strings)
        ref = [t for r in session.generate(session.plan(vanilla, prompt_ids)) for t in r.token_ids]
        check = compare_greedy(session, prompt_ids, token_ids, ref)
        result.update(lossless=check.verdict == "equal", first_difference=check.index, greedy_check=check.as_dict())
    if args.save_run:
        save_run(args.save_run, session.run_header(run_plan.as_dict(), prompt_ids, source="cli"), records)
    if args.trace:
        write_chrome_trace(args.trace, records, info.device)
    if args.json:
        print(json.dumps(result))
    summary = (f"easyspec: {m.new_tokens} tokens in {m.total_s:.2f} s ({m.tokens_per_s:.2f} tok/s), "
               f"mode {spec.mode}, rounds {m.rounds}")
    if m.acceptance_rate is not None:
        summary += f", AR {m.acceptance_rate:.3f}, AL {m.mean_accepted_length:.2f}"
    if m.run_peak_memory_bytes:
        summary += (f", {metrics.memory_label(m.memory_source)} {m.run_peak_memory_bytes / 2**30:.2f} GiB "
                    f"({metrics.GROWTH_LABEL} +{m.run_memory_growth_bytes / 2**20:.0f} MiB)")
    if fallback := fallback_summary(records):
        summary += f", {fallback}"
    if args.check_lossless:
        summary += f", lossless {result['lossless']} ({check.describe()})"
    print(summary, file=sys.stderr)
    return 0


def cmd_app(args) -> int:
    from easyspec.app.context import AppOptions, parse_auth

    options = AppOptions(host=args.host, port=args.port, devices=args.devices, pair=args.pair, base=args.base,
                         draft=args.draft, dtype=args.dtype, draft_dtype=args.draft_dtype, device=args.device,
                         allow_custom_models=args.allow_custom_models, share=args.share == "true",
                         allow_remote=args.allow_remote, auth=parse_auth(args.auth, args.auth_file),
                         timeout_s=args.timeout, memory_budget_mb=args.memory_budget_mb,
                         max_sessions=args.max_sessions, on_low_acceptance=args.on_low_acceptance)
    from easyspec.app.dashboard import serve  # gradio: imported only once the options are valid

    return serve(options)


def cmd_cache(args) -> int:
    from easyspec.core.models.offline_pair import cache_info, clear_cache

    if args.action == "clear":
        freed = clear_cache()
        print(f"easyspec: cleared the cache, {freed / 1e6:.1f} MB freed")
        return 0
    info = cache_info()
    print(json.dumps(info, indent=2, default=str))
    return 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: comma-separated integers expected; got {text!r}") from None


def cmd_bench(args) -> int:
    if args.bench_command != "gpu":
        return _bench_pair(args)
    from easyspec.core.evaluation.gpu_bench import BenchConfig, format_table, run, save  # torch only, no transformers

    cfg = BenchConfig(presets=tuple(p.strip() for p in args.presets.split(",") if p.strip()), device=args.device,
                      dtype=args.dtype, repeats=args.repeats, warmup=args.warmup, draft_len=args.draft_len,
                      context=args.context, layer_parallel=_int_list(args.layer_parallel, "--layer-parallel"),
                      cuda_graphs=not args.no_cuda_graphs, time_budget_s=args.time_budget_s, seed=args.seed,
                      out=args.out)
    result = run(cfg)
    path = save(result, cfg.out)
    print(f"easyspec: wrote {path} ({result['elapsed_s']:.1f} s)", file=sys.stderr)
    print(format_table(result))  # last, on stdout; the progress went to stderr
    return 0


def _write_report(args, session, prompts, runs, grid, notes) -> None:
    from easyspec.core.files import write_text_atomic
    from easyspec.core.evaluation.report import context_for
    from easyspec.visualizations.report import pilot_report_html

    ctx = context_for(session, prompts, " ".join(["easyspec", *sys.argv[1:]]), notes=notes)
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, pilot_report_html(runs, grid, ctx, args.report_lang))
    print(f"easyspec: report written to {path}", file=sys.stderr)


def _bench_pair(args) -> int:
    """`bench acceptance` and `bench speed` on a real pair; JSON + Markdown under --out."""
    from easyspec.core.evaluation import bench
    from easyspec.core.settings import SpecConfig
    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.evaluation.pilot import PilotGrid
    from easyspec.core.evaluation.prompt_sets import BUILTIN_SETS, builtin_prompts, read_prompt_file
    from easyspec.core.session import Session

    sets = [name.strip() for name in args.prompts.split(",") if name.strip()]
    if len(sets) > 1 or sets[:1] and sets[0] in BUILTIN_SETS:  # the first LIMIT prompts of each built-in set
        unknown = [name for name in sets if name not in BUILTIN_SETS]
        if unknown:
            raise ValueError(f"--prompts: {unknown[0]!r} is not a built-in set ({', '.join(BUILTIN_SETS)}); a file "
                             f"of prompts is given alone")
        prompts = [p for name in sets for p in builtin_prompts(name)[: max(1, args.limit)]]
    else:
        prompts = read_prompt_file(args.prompts)[: max(1, args.limit)]
    sizes = _int_list(args.layer_parallel, "--layer-parallel")
    policies = [p.strip() for p in args.calibration.split(",") if p.strip()]
    for n in sizes:
        SpecConfig(layer_parallel=n)
    for p in policies:
        SpecConfig(calibration=p)
    SpecConfig(tree_depth=args.tree_depth, tree_width=args.tree_width, draft_dtype=args.draft_dtype or "")
    precisions = tuple(dict.fromkeys(p.strip() for p in getattr(args, "draft_dtypes", "").split(",") if p.strip()))
    for p in precisions:
        SpecConfig(draft_dtype=p)
    source = resolve_pair(args.base, args.draft, args.pair or (None if args.base else "qwen2.5-coder"))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with Session(source, args.dtype, args.device, args.devices, draft_dtype=args.draft_dtype) as session:
        if args.bench_command == "acceptance":
            temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
            kept: list = []
            result = bench.acceptance(session, prompts, sizes, policies, args.draft_len, args.max_new_tokens,
                                      temps, keep=kept, tree_depth=args.tree_depth, tree_width=args.tree_width,
                                      adaptive=args.adaptive)
            if args.report:  # the greedy pass when there is one: it carries the equality evidence
                grid, runs = min(kept, key=lambda gr: gr[0].temperature)
                left_out = [f"T={g.temperature:g}" for g, _ in kept if g is not grid]
                notes = [f"runs at {', '.join(left_out)} (in {args.out}.md)"] if left_out else []
                _write_report(args, session, prompts, runs, grid, notes)
        else:
            grid = PilotGrid(layer_parallel=tuple(sizes), calibration=tuple(policies), draft_len=(args.draft_len,),
                             max_new_tokens=args.max_new_tokens, tree_depth=args.tree_depth,
                             tree_width=args.tree_width, adaptive=args.adaptive, draft_dtypes=precisions)
            settings = {s.label: s.config for s in grid.settings()}
            runs: list = []
            result = bench.speed(session, prompts, settings, args.repeats, args.max_new_tokens,
                                 not args.no_transformers, args.draft_len, keep=runs,
                                 assistant_dtypes=("bfloat16",) if "bfloat16" in precisions else ())
            if args.report:
                grid = PilotGrid(layer_parallel=sizes, calibration=tuple(policies), draft_len=(args.draft_len,),
                                 max_new_tokens=args.max_new_tokens, chat=True)
                notes = [f"transformers' assisted generation (no round records; in {args.out}.md)"] \
                    if not args.no_transformers else []
                _write_report(args, session, prompts, runs, grid, notes)
        info = session.info
    result["meta"] = bench.run_meta(" ".join(["easyspec", *sys.argv[1:]]), started, info, args)
    if args.bench_command == "speed" and precisions:  # the criterion it states (issue 21's target, equal outputs)
        result["passed"] = bench.precision_passed(result["rows"])
    bench.write_results(args.out, args.bench_command, result)
    if args.bench_command == "acceptance":  # one chart per temperature: speedup and AR against N
        from easyspec.core.files import write_text_atomic
        from easyspec.visualizations.pilot_charts import pilot_figure

        for t in sorted({r["temperature"] for r in result["rows"]}):
            rows = [{**r, "mode": "easyspec"} for r in result["rows"] if r["temperature"] == t]
            write_text_atomic(f"{args.out}_T{t:g}.html", pilot_figure(rows).to_html(include_plotlyjs=True))
    if args.json:
        print(json.dumps(result))
    else:
        print(bench.markdown(args.bench_command, result))
    return 1 if result.get("passed") is False else 0


def cmd_tune(args) -> int:
    from easyspec.core.models.loading import resolve_pair
    from easyspec.core.evaluation.prompt_sets import BUILTIN_SETS, builtin_prompts, read_prompt_file
    from easyspec.core.session import Session
    from easyspec.core.files import write_text_atomic
    from easyspec.core.tuner.cache import tuning_path
    from easyspec.core.tuner.report import markdown
    from easyspec.core.tuner.types import TuneConfig

    cfg = TuneConfig(tolerance=args.tolerance, max_group=args.max_group, draft_len=args.draft_len,
                     max_new_tokens=args.max_new_tokens, policies=not args.no_policies, exhaustive=args.exhaustive,
                     search=args.search, probe_rounds=args.probe_rounds, holdout=not args.no_holdout)
    prompts = builtin_prompts(args.prompts) if args.prompts in BUILTIN_SETS else read_prompt_file(args.prompts)
    prompts = prompts[: max(1, args.limit)]
    source = resolve_pair(args.base, args.draft, args.pair or (None if args.base else "qwen2.5-coder"))
    with Session(source, args.dtype, args.device) as session:
        ids = [session.encode(p, args.chat) for p in prompts]
        result = session.tune(ids, cfg, progress=lambda m: print(f"easyspec: tune: {m}", file=sys.stderr))
        key = session.pair_key
    text = markdown(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(f"{args.out}.json", json.dumps(result.as_dict(), indent=1))
        write_text_atomic(f"{args.out}.md", text)
    print(json.dumps(result.as_dict()) if args.json else text)
    print(f"easyspec: tuned plan {result.plan} cached in {tuning_path(key)}; use --groups auto", file=sys.stderr)
    return 0


def cmd_project(args) -> int:
    from easyspec.core.evaluation import hardware, shapes
    from easyspec.core.evaluation.projection import Setting, project
    from easyspec.core.settings import default_layer_parallel

    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1; got {args.devices}")
    dev, eff = hardware.load_device(args.hardware) if args.hardware.lower().endswith((".json", ".toml")) \
        else (hardware.device(args.hardware), hardware.FITTED)
    base = shapes.resolve(args.base)
    if args.draft is None and base.name not in shapes.PAIRS:
        raise ValueError(f"--draft is needed for {args.base!r} (presets with a default draft: "
                         f"{', '.join(shapes.PAIRS)})")
    draft = shapes.resolve(args.draft or shapes.PAIRS[base.name][0])
    al_source = "entered" if args.accepted_length is not None else "assumed: no pilot, none entered"
    al = 3.5 if args.accepted_length is None else args.accepted_length
    al_easy = al if args.easyspec_accepted_length is None else args.easyspec_accepted_length
    n = args.layer_parallel or default_layer_parallel(args.devices)
    s = Setting(devices=args.devices, context=args.context, draft_len=args.draft_len, layer_parallel=n,
                al_speculative=al, al_easyspec=al_easy, batch=args.batch, cuda_graphs=args.graphs,
                tree_width=args.tree_width)
    p = project(base, draft, dev, s, eff)
    p = {"kind": "projected by the hardware model, not measured", **p, "accepted_length_source": al_source}
    if args.json:
        print(json.dumps(p))
        return 0
    print(f"projected (a model, not a measurement): {base.name} / {draft.name} on {args.devices} x {dev.name}, "
          f"context {args.context}, B = {args.batch}, k = {args.draft_len}, N = {s.layer_parallel}, "
          f"{'CUDA graphs' if args.graphs else 'eager'}")
    for mode in ("vanilla", "speculative", "easyspec"):
        r = p[mode]
        al_text = f", AL {r['accepted_length']:.2f} ({al_source})" if "accepted_length" in r else ""
        util = " ".join(f"{u:.0%}" for u in r["utilisation"])
        print(f"  {mode:<12} {r['tokens_per_s']:9.1f} tok/s{al_text}; utilisation per device: {util}")
    print(f"  drafting speedup (speculative / easyspec drafting time): {p['drafting_speedup']:.2f}x; "
          f"attention share of a draft step's bytes {p['draft_attention_share']:.0%}; verify {p['verify_bound']}-bound")
    return 0


def _fault_message(exc: Exception) -> str | None:
    """The message of a fault that explains itself (a file that cannot be written, a rank that died,
    out of memory); None for anything else. Looked up lazily: `cache info` never imports torch."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    kinds = tuple(getattr(sys.modules[m], n) for m, n in (("easyspec.core.runtime.parallel", "DistributedError"),
                                                          ("easyspec.core.session", "DeviceMemoryError"))
                  if m in sys.modules)
    return str(exc) if kinds and isinstance(exc, kinds) else None


def _check_finite(args) -> None:
    """argparse's float() takes 'inf' and 'nan': refuse them in every float flag (NaN passes every
    range check written as a comparison, and --temperature inf would sample uniformly)."""
    for dest, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{dest.replace('_', '-')} must be a finite number; got {value}")


def main(argv: list[str] | None = None) -> int:
    configure_logging()  # core's progress and warnings: bare lines on stderr, as the commands' own
    args = build_parser().parse_args(argv)
    handlers = {"generate": cmd_generate, "cache": cmd_cache, "app": cmd_app, "bench": cmd_bench, "tune": cmd_tune,
                "project": cmd_project}
    try:
        _check_finite(args)
        return handlers[args.command](args)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"easyspec: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("easyspec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a fault or an unexpected failure: still no traceback unless asked for
        if os.environ.get("EASYSPEC_DEBUG"):
            raise
        fault = _fault_message(exc)
        if fault is not None:
            print(f"easyspec: error: {fault}", file=sys.stderr)
            return 1
        print(f"easyspec: internal error: {type(exc).__name__}: {exc} (set EASYSPEC_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
