"""The `easyspec` command line: `generate` (stream text or print one JSON line) and `cache info|clear`.

Every command consumes the engine's one record stream (`core.engine.generate`). Bad input ends in
one readable line on stderr and exit status 2, never a traceback (EASYSPEC_DEBUG=1 shows one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with vanilla, speculative or EasySpec decoding",
                       description="Generate text. Defaults: the offline qwen2.5-coder pair, easyspec, "
                                   "N=4, every-round calibration, k=5, greedy.")
    src = p.add_argument_group("models")
    src.add_argument("--pair", help="a named offline pair (qwen2.5-coder); the default when no --base is given")
    src.add_argument("--base", help="base model: Hugging Face id or local checkpoint folder")
    src.add_argument("--draft", help="draft model: Hugging Face id or local checkpoint folder")
    src.add_argument("--dtype", default="float32", help="float32 | bfloat16 (default float32)")
    src.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    inp = p.add_argument_group("prompt")
    inp.add_argument("--prompt", help="the prompt text")
    inp.add_argument("--prompt-file", help="read the prompt from this UTF-8 text file")
    inp.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    gen = p.add_argument_group("decoding")
    gen.add_argument("--mode", default="easyspec", help="vanilla | speculative | easyspec")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--draft-len", type=int, default=5, help="draft tokens per round, k")
    gen.add_argument("--layer-parallel", type=int, default=4, help="layer-parallel size N (easyspec)")
    gen.add_argument("--sequential-head", type=int, default=1, help="first draft layers kept sequential")
    gen.add_argument("--sequential-tail", type=int, default=1, help="last draft layers kept sequential")
    gen.add_argument("--calibration", default="every-round", help="none | every-round | on-mismatch")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0 turns top-k off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print exactly one JSON line on stdout")
    out.add_argument("--check-lossless", action="store_true",
                     help="also run vanilla decoding and report whether the tokens are identical (greedy only)")
    out.add_argument("--save-run", help="write the per-round records to this JSON Lines file (replayable)")


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="show or clear the converted offline-model cache")
    p.add_argument("action", choices=("info", "clear"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easyspec", description="EasySpec layer-parallel speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_cache(sub)
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
    from easyspec.core.engine import SpecConfig
    from easyspec.core.sampling import SamplingConfig

    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    spec = SpecConfig(mode=args.mode, draft_len=args.draft_len, layer_parallel=args.layer_parallel,
                      sequential_head=args.sequential_head, sequential_tail=args.sequential_tail,
                      calibration=args.calibration, max_new_tokens=args.max_new_tokens, sampling=sampling,
                      stop_strings=tuple(args.stop))
    if args.check_lossless and not sampling.greedy:
        raise ValueError("--check-lossless compares greedy outputs token for token: it needs --temperature 0")
    if args.base is None and args.draft is not None:
        raise ValueError("--draft needs --base")
    return spec


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def cmd_generate(args) -> int:
    from easyspec.core import metrics
    from easyspec.core.engine import SpecConfig, Stopping, generate
    from easyspec.core.grouping import describe, layer_groups
    from easyspec.core.loading import load_pair
    from easyspec.core.records import RunHeader, save_run
    from easyspec.core.text import TextStream, encode_prompt

    spec = _configs(args)
    prompt = _read_prompt(args)
    pair_name = args.pair or (None if args.base else "qwen2.5-coder")
    needs_draft = spec.mode != "vanilla"
    models = load_pair(base=args.base, draft=args.draft, pair=pair_name, dtype=args.dtype, device=args.device,
                       with_draft=needs_draft)
    tok = models.tokenizer
    base, draft = models.base.decoder, models.draft.decoder if models.draft else None
    if spec.mode == "easyspec":  # validate N / head / tail against the draft before any work
        plan = layer_groups(draft.cfg.n_layers, spec.layer_parallel, spec.sequential_head, spec.sequential_tail)
        print(f"easyspec: draft layer plan {describe(plan)}", file=sys.stderr)
    prompt_ids = encode_prompt(tok, prompt, args.chat)
    stopping = Stopping(models.eos_ids, spec.stop_strings, lambda ids: tok.decode(ids, skip_special_tokens=True))

    stream = TextStream(tok)
    records = []
    for rec in generate(base, draft, prompt_ids, spec, stopping):
        records.append(rec)
        piece = stream.push(rec.token_ids, final=rec.stop is not None)
        if not args.json and piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if not args.json:
        sys.stdout.write(stream.push([], final=True) + "\n")
    m = metrics.compute(records)
    token_ids = list(stream.ids)
    result = {"text": stream.text(), "token_ids": token_ids, "mode": spec.mode, "settings": spec.as_dict(),
              "base": models.base.name, "draft": models.draft.name if models.draft else None,
              "dtype": args.dtype, "device": args.device, "prompt_tokens": len(prompt_ids),
              "stop": records[-1].stop, "metrics": m.as_dict()}
    if args.check_lossless:
        ref = [t for r in generate(base, None, prompt_ids, SpecConfig(mode="vanilla",
               max_new_tokens=spec.max_new_tokens, stop_strings=spec.stop_strings), stopping) for t in r.token_ids]
        diff = _first_difference(token_ids, ref)
        result.update(lossless=diff is None, first_difference=diff)
    if args.save_run:
        header = RunHeader(settings=spec.as_dict(), base=models.base.name,
                           draft=models.draft.name if models.draft else None, prompt_ids=tuple(prompt_ids),
                           device=args.device, dtype=args.dtype,
                           created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        save_run(args.save_run, header, records)
    if args.json:
        print(json.dumps(result))
    summary = (f"easyspec: {m.new_tokens} tokens in {m.total_s:.2f} s ({m.tokens_per_s:.2f} tok/s), "
               f"mode {spec.mode}, rounds {m.rounds}")
    if m.acceptance_rate is not None:
        summary += f", AR {m.acceptance_rate:.3f}, AL {m.mean_accepted_length:.2f}"
    if args.check_lossless:
        summary += f", lossless {result['lossless']}"
    print(summary, file=sys.stderr)
    return 0


def cmd_cache(args) -> int:
    from easyspec.core.offline_pair import cache_info, clear_cache

    if args.action == "clear":
        freed = clear_cache()
        print(f"easyspec: cleared the cache, {freed / 1e6:.1f} MB freed")
        return 0
    info = cache_info()
    print(json.dumps(info, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"generate": cmd_generate, "cache": cmd_cache}
    try:
        return handlers[args.command](args)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"easyspec: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("easyspec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still no traceback unless asked for
        if os.environ.get("EASYSPEC_DEBUG"):
            raise
        print(f"easyspec: internal error: {type(exc).__name__}: {exc} (set EASYSPEC_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
