"""`easyspec bench gpu`: per-phase latencies of the decoder on one device, in one short command.

What it is: random-weight models in the shapes of Qwen2.5-0.5B, 1.5B and 7B, built directly on the
device in the target dtype, and medians over repeats (after warm-up) of the four forwards a round
is made of (docs/method.md#one-round): the draft step (one token; sequential, and fuzzy with the single-device
batched groups of `layer_groups(L, N)`), the calibration forward (the draft, exact, 1..k+1 tokens),
the base's verify forward (k+1 tokens) and the vanilla step (the base, one token). Each runs eager
and, on CUDA, as a replayed CUDA graph. From these it derives the drafting speedup per N and a
round-time estimate for speculative vs easyspec decoding.
What it is not: an accuracy benchmark (the weights are random; acceptance comes from `bench
acceptance`) nor a multi-device one (the paper's base runs at TP=8; here everything is on one
device). It imports torch and the standard library only, so it runs where the package was
installed with `pip install --no-deps` (no transformers, no gradio).
"""
from __future__ import annotations

import datetime
import json
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..settings import Group, check_finite
from ..engine.decoder import Decoder, DecoderConfig, DecoderWeights, ForwardOptions, KVCache, RopeConfig
from ..files import write_text_atomic
from ..engine.grouping import describe, layer_groups

SCHEMA = "easyspec.gpu_bench/1"
logger = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
NOTES = (
    "Timing: each repeat starts on an idle device (synchronize), then CUDA events (CPU: perf_counter_ns) "
    "around one forward; the median over repeats is reported, warm-up excluded.",
    "A forward includes the final norm and the LM head (fp32 logits) and excludes sampling.",
    "The cache holds `context` positions (a real prefill of random tokens) before every timed forward; "
    "every repeat runs at that same position (the cache length is reset, the K/V slot rewritten).",
    "CUDA graphs: each forward is captured once, with static token and position inputs, at position "
    "`context` and replayed there; a fixed position is all a latency needs (generation would capture "
    "per position or pass the position as a tensor).",
    "torch.compile is not measured: every (model, layer plan, token count) variant compiles separately, "
    "tens of seconds each, which alone would exceed the 4-minute budget; CUDA graphs already remove "
    "the launch overhead that compile's reduce-overhead mode targets.",
    "Layer-parallel here is the single-device batched form (the N attentions of a group as one bmm "
    "over stacked weights), not the paper's multi-GPU form; the base runs unsharded on one device.",
    "Round estimate, all k drafts accepted: speculative = first forward of 2 tokens (d_k and the "
    "bonus, exact) + (k-1) sequential draft steps + verify(k+1); easyspec(N) = calibration of k+1 "
    "tokens + (k-1) fuzzy draft steps + verify(k+1). Break-even AL = round time / vanilla step.",
    "Weights are random (seeded, std 1/sqrt(fan_in)): the figures are timings only.",
)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-family model; enough to build random weights of the right size."""

    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    qkv_bias: bool = True
    tie_word_embeddings: bool = False
    rope_theta: float = 1_000_000.0

    def config(self) -> DecoderConfig:
        return DecoderConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                             intermediate_size=self.intermediate_size, n_layers=self.n_layers,
                             n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                             max_position=32768, rope=RopeConfig(theta=self.rope_theta), qkv_bias=self.qkv_bias,
                             tie_word_embeddings=self.tie_word_embeddings, model_type="qwen2")

    def n_params(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        qkv = (self.n_heads + 2 * self.n_kv_heads) * hd
        layer = qkv * d + (qkv if self.qkv_bias else 0) + d * self.n_heads * hd + 3 * f * d + 2 * d
        return self.vocab_size * d * (1 if self.tie_word_embeddings else 2) + self.n_layers * layer + d


# Shapes from the models' config.json files (Qwen2.5-0.5B and 1.5B tie the LM head to the embedding).
PRESETS: dict[str, ModelShape] = {
    "qwen2.5-0.5b": ModelShape(24, 896, 14, 2, 64, 4864, 151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": ModelShape(28, 1536, 12, 2, 128, 8960, 151936, tie_word_embeddings=True),
    "qwen2.5-7b": ModelShape(28, 3584, 28, 4, 128, 18944, 152064),
    "tiny": ModelShape(6, 64, 4, 2, 16, 128, 256),  # CPU tests: N up to 4 fits its 4 middle layers
}
DEFAULT_PRESETS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b")


@dataclass(frozen=True)
class BenchConfig:
    presets: tuple[str, ...] = DEFAULT_PRESETS
    device: str = "cuda"
    dtype: str = "auto"  # bfloat16 on CUDA, float32 on CPU
    repeats: int = 100
    warmup: int = 10
    draft_len: int = 5
    context: int = 512
    layer_parallel: tuple[int, ...] = (2, 3, 4)
    cuda_graphs: bool = True
    time_budget_s: float = 200.0
    seed: int = 0
    out: str = "results/gpu_bench"

    def __post_init__(self) -> None:
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown or not self.presets or len(set(self.presets)) != len(self.presets):
            raise ValueError(f"--presets: give distinct names from {', '.join(PRESETS)}; got {','.join(self.presets)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be auto or one of {', '.join(DTYPES)}; got {self.dtype}")
        if self.device_type not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda[:index]; got {self.device}")
        for name, v, low in (("--repeats", self.repeats, 1), ("--warmup", self.warmup, 0),
                             ("--draft-len", self.draft_len, 1), ("--context", self.context, 1)):
            if v < low:
                raise ValueError(f"{name} must be >= {low}; got {v}")
        if not self.layer_parallel or min(self.layer_parallel) < 2:
            raise ValueError(f"--layer-parallel: sizes >= 2 (N=1, sequential, is always measured); "
                             f"got {self.layer_parallel}")
        check_finite(self.time_budget_s, "--time-budget-s")
        if self.time_budget_s <= 0:
            raise ValueError(f"--time-budget-s must be > 0; got {self.time_budget_s}")

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.device_type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype, seed: int) -> Decoder:
    """Random weights made on `device` in `dtype` (never staged on the host), std 1/sqrt(fan_in).

    That std gives every projection unit-variance outputs, so the residual stream grows only with
    sqrt(layers) and attention scores stay O(1): activations finite in bf16, softmax not degenerate.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    s = shape
    qkv, d, f, L = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim, s.hidden_size, s.intermediate_size, s.n_layers

    def rand(*size: int, std: float) -> torch.Tensor:
        return torch.randn(size, generator=gen, device=device, dtype=dtype).mul_(std)

    def ones(*size: int) -> torch.Tensor:
        return torch.ones(size, device=device, dtype=dtype)

    embed = rand(s.vocab_size, d, std=d ** -0.5)
    w = DecoderWeights(
        embed=embed, wqkv=rand(L, qkv, d, std=d ** -0.5), bqkv=rand(L, qkv, std=0.02) if s.qkv_bias else None,
        wo=rand(L, d, s.n_heads * s.head_dim, std=(s.n_heads * s.head_dim) ** -0.5), bo=None,
        norm_in=ones(L, d), norm_post=ones(L, d), w_gate_up=rand(L, 2 * f, d, std=d ** -0.5), b_gate_up=None,
        w_down=rand(L, d, f, std=f ** -0.5), b_down=None, norm=ones(d),
        lm_head=embed if s.tie_word_embeddings else rand(s.vocab_size, d, std=d ** -0.5))
    return Decoder(shape.config(), w)


def draft_plan(n_layers: int, layer_parallel: int) -> tuple[Group, ...]:
    """The draft's layer plan for size N (head and tail layers sequential, the project default)."""
    return layer_groups(n_layers, layer_parallel, head=1, tail=1)


def forward_fn(model: Decoder, cache: KVCache, tokens: torch.Tensor, pos: int, groups: tuple[Group, ...] | None,
               all_logits: bool = False) -> Callable[[], torch.Tensor]:
    """A closure running tokens [T] at pos..pos+T-1 with the given layer plan; returns the logits.

    Every call resets the cache length to `pos` first, so repeats (and a CUDA graph's replays) run
    at the same position against the same `pos` valid entries.
    """
    assert tokens.dim() == 1 and pos + tokens.numel() <= cache.max_len, (tokens.shape, pos, cache.max_len)
    opts = ForwardOptions(groups=groups, all_logits=all_logits)

    def step() -> torch.Tensor:  # [T or 1, vocab] fp32
        cache.length = pos
        return model.forward(tokens, pos, cache, opts)
    return step


def cuda_graphed(fn: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """Capture fn once into a CUDA graph (after warm-up on a side stream, as PyTorch requires)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()  # static output: every replay rewrites it in place

    def replay() -> torch.Tensor:
        graph.replay()
        return out
    return replay


def time_ms(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int,
            repeats: int) -> tuple[list[float], bool]:
    """Per-repeat milliseconds (each from an idle device) and whether the output was finite."""
    for _ in range(warmup):
        fn()
    finite = bool(torch.isfinite(fn()).all())  # one host sync, outside the timed repeats
    if device.type != "cuda":
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out, finite
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events], finite


class _Bench:
    """One run: the clock against the time budget, the measurement list, progress through `log`."""

    def __init__(self, cfg: BenchConfig, device: torch.device, log: Callable[[str], None]):
        self.cfg, self.device, self.log = cfg, device, log
        self.t0 = time.perf_counter()
        self.measurements: list[dict] = []
        self.skipped: list[str] = []
        self.longest_s = 0.0
        self.graphs_ok = cfg.cuda_graphs and device.type == "cuda"
        self.graph_error: str | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def near_budget(self) -> bool:
        """True when twice the longest measurement so far would overrun the budget."""
        return self.elapsed() + 2 * self.longest_s > self.cfg.time_budget_s

    def measure(self, model_name: str, kind: str, fn: Callable[[], torch.Tensor], tokens: int,
                layer_parallel: int | None = None, plan: str | None = None) -> None:
        """Time fn eager and, where enabled, as a CUDA graph; append one record per mode."""
        modes = ["eager"] + (["cuda_graph"] if self.graphs_ok else [])
        for mode in modes:
            what = f"{model_name} {kind} T={tokens}" + (f" N={layer_parallel}" if layer_parallel else "") + f" {mode}"
            if self.near_budget():
                self.skipped.append(f"{what}: time budget")
                continue
            start = time.perf_counter()
            try:
                run = fn if mode == "eager" else cuda_graphed(fn, self.device)
                times, finite = time_ms(run, self.device, self.cfg.warmup, self.cfg.repeats)
            except RuntimeError as exc:  # a capture that fails must not cost the rest of the table
                if mode == "eager":
                    raise
                self.graphs_ok, self.graph_error = False, f"{type(exc).__name__}: {exc}"
                self.skipped.append(f"{what}: CUDA graph capture failed, graphs off for the rest of the run")
                self.log(f"CUDA graph capture failed ({self.graph_error}); continuing eager only")
                torch.cuda.synchronize(self.device)
                continue
            self.longest_s = max(self.longest_s, time.perf_counter() - start)
            rec = {"model": model_name, "kind": kind, "tokens": tokens, "layer_parallel": layer_parallel,
                   "plan": plan, "mode": mode, "median_ms": statistics.median(times), "min_ms": min(times),
                   "max_ms": max(times), "repeats": len(times), "warmup": self.cfg.warmup, "finite": finite}
            self.measurements.append(rec)
            self.log(f"[{self.elapsed():6.1f} s] {what}: {rec['median_ms']:.3f} ms")


def roles(presets: tuple[str, ...]) -> tuple[list[tuple[str, str]], set[str], set[str]]:
    """(draft, base) pairs: every smaller preset drafts for every larger one; a lone preset pairs with itself."""
    order = sorted(presets, key=lambda p: PRESETS[p].n_params())
    pairs = [(d, b) for i, d in enumerate(order) for b in order[i + 1:]] or [(order[0], order[0])]
    return pairs, {d for d, _ in pairs}, {b for _, b in pairs}


def _measure_model(bench: _Bench, name: str, is_draft: bool, is_base: bool) -> None:
    cfg, device = bench.cfg, bench.device
    shape = PRESETS[name]
    t = time.perf_counter()
    model = build_model(shape, device, cfg.torch_dtype, cfg.seed + sorted(PRESETS).index(name))
    k1 = cfg.draft_len + 1
    cache = model.new_cache(cfg.context + k1)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    prompt = torch.randint(shape.vocab_size, (cfg.context,), generator=gen, device=device)
    with torch.inference_mode():
        model.forward(prompt, 0, cache, ForwardOptions(logits=False))  # the context the timed forwards attend to
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    bench.log(f"[{bench.elapsed():6.1f} s] built {name} ({shape.n_params() / 1e9:.2f} B parameters) "
              f"and prefilled {cfg.context} tokens in {time.perf_counter() - t:.1f} s")
    ids = torch.randint(shape.vocab_size, (k1,), generator=gen, device=device)  # static token inputs
    pos = cfg.context
    with torch.inference_mode():
        if is_draft:  # 1. draft step, sequential (N=1) then fuzzy batched groups; 2. calibration 1..k+1
            for n in (1, *cfg.layer_parallel):
                plan = draft_plan(shape.n_layers, n)
                bench.measure(name, "draft_step", forward_fn(model, cache, ids[:1], pos, plan), 1, n, describe(plan))
            for T in range(1, k1 + 1):
                bench.measure(name, "calibration", forward_fn(model, cache, ids[:T], pos, None), T)
        if is_base:  # 3. vanilla step (one token); 4. verify of the last token plus k drafts
            bench.measure(name, "vanilla_step", forward_fn(model, cache, ids[:1], pos, None), 1)
            bench.measure(name, "verify", forward_fn(model, cache, ids, pos, None, all_logits=True), k1)
    del model, cache
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _lookup(ms: list[dict], model: str, kind: str, mode: str, tokens: int, n: int | None = None) -> float | None:
    for m in ms:
        if (m["model"], m["kind"], m["mode"], m["tokens"], m["layer_parallel"]) == (model, kind, mode, tokens, n):
            return m["median_ms"]
    return None


def derive(ms: list[dict], pairs: list[tuple[str, str]], k: int, sizes: tuple[int, ...]) -> list[dict]:
    """Drafting speedup per N and round-time estimates per (pair, mode); None where a figure is missing."""
    out = []
    for draft, base in pairs:
        for mode in ("eager", "cuda_graph"):
            seq = _lookup(ms, draft, "draft_step", mode, 1, 1)
            verify = _lookup(ms, base, "verify", mode, k + 1)
            vanilla = _lookup(ms, base, "vanilla_step", mode, 1)
            first = _lookup(ms, draft, "calibration", mode, min(2, k + 1))
            calib = _lookup(ms, draft, "calibration", mode, k + 1)
            if seq is None and vanilla is None:
                continue
            spec = None if None in (first, seq, verify) else first + (k - 1) * seq + verify
            row = {"draft": draft, "base": base, "mode": mode, "draft_step_ms": {"1": seq},
                   "drafting_speedup": {}, "round_ms": {"speculative": spec, "easyspec": {}},
                   "vanilla_ms": vanilla, "break_even_al": {"speculative": _ratio(spec, vanilla), "easyspec": {}}}
            for n in sizes:
                step = _lookup(ms, draft, "draft_step", mode, 1, n)
                rnd = None if None in (calib, step, verify) else calib + (k - 1) * step + verify
                row["draft_step_ms"][str(n)] = step
                row["drafting_speedup"][str(n)] = _ratio(seq, step)
                row["round_ms"]["easyspec"][str(n)] = rnd
                row["break_even_al"]["easyspec"][str(n)] = _ratio(rnd, vanilla)
            out.append(row)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "capability": [props.major, props.minor],
                "memory_gib": round(props.total_memory / 2 ** 30, 1), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def run(cfg: BenchConfig, log: Callable[[str], None] = logger.info) -> dict:
    """Build each preset in turn (one on the device at a time), measure it, and derive the pair figures."""
    if cfg.device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch on this machine (use --device cpu)")
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    pairs, drafts, bases = roles(cfg.presets)
    for d in drafts:
        for n in cfg.layer_parallel:
            draft_plan(PRESETS[d].n_layers, n)  # ValueError now, not after minutes of measuring
    bench = _Bench(cfg, device, log)
    for name in sorted(drafts | bases, key=lambda p: PRESETS[p].n_params()):
        if bench.elapsed() > 0.8 * cfg.time_budget_s:
            bench.skipped.append(f"{name}: not built, time budget")
            continue
        _measure_model(bench, name, name in drafts, name in bases)
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_info(device), "torch": torch.__version__, "python": platform.python_version(),
        "dtype": str(cfg.torch_dtype).removeprefix("torch."),
        "settings": {**asdict(cfg), "sequential_head": 1, "sequential_tail": 1},
        "cuda_graphs": {"requested": cfg.cuda_graphs, "error": bench.graph_error,
                        "measured": any(m["mode"] == "cuda_graph" for m in bench.measurements)},
        "models": {p: {"shape": asdict(PRESETS[p]), "params": PRESETS[p].n_params(),
                       "roles": [r for r, s in (("draft", drafts), ("base", bases)) if p in s]}
                   for p in sorted(drafts | bases, key=lambda p: PRESETS[p].n_params())},
        "pairs": [{"draft": d, "base": b} for d, b in pairs],
        "measurements": bench.measurements,
        "derived": derive(bench.measurements, pairs, cfg.draft_len, cfg.layer_parallel),
        "skipped": bench.skipped,
        "notes": list(NOTES),
        "elapsed_s": round(bench.elapsed(), 2),
    }


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_table(result: dict) -> str:
    """The compact table printed last: per-model medians (ms), then per-pair derived figures."""
    s, ms = result["settings"], result["measurements"]
    lines = [f"easyspec bench gpu | {result['device']['name']} | torch {result['torch']} | {result['dtype']} | "
             f"context {s['context']} | k {s['draft_len']} | median ms over {s['repeats']} repeats "
             f"(warm-up {s['warmup']}); graph = CUDA graph replayed at a fixed position"
             + ("" if result["cuda_graphs"]["measured"] else f" (none: {_no_graphs(result)})"),
             f"{'model':<14} {'forward':<24} {'eager':>9} {'graph':>9}"]
    seen = []
    for m in ms:
        key = (m["model"], m["kind"], m["tokens"], m["layer_parallel"])
        if key not in seen:
            seen.append(key)
    for model, kind, tokens, n in seen:
        label = f"{kind} T={tokens}" + (f" N={n}" if n else "")
        e = _lookup(ms, model, kind, "eager", tokens, n)
        g = _lookup(ms, model, kind, "cuda_graph", tokens, n)
        lines.append(f"{model:<14} {label:<24} {_f(e):>9} {_f(g):>9}")
    sizes = [str(n) for n in s["layer_parallel"]]
    lines.append(f"{'draft -> base':<28} {'mode':<10} {'draft speedup N=' + '/'.join(sizes):<22} "
                 f"{'round ms spec | easyspec N=' + '/'.join(sizes):<36} {'vanilla ms':>10}")
    for row in result["derived"]:
        speed = " / ".join(_f(row["drafting_speedup"][n], "{:.2f}") for n in sizes)
        rounds = (_f(row["round_ms"]["speculative"], "{:.2f}") + " | "
                  + " / ".join(_f(row["round_ms"]["easyspec"][n], "{:.2f}") for n in sizes))
        lines.append(f"{row['draft'] + ' -> ' + row['base']:<28} {row['mode']:<10} {speed:<22} {rounds:<36} "
                     f"{_f(row['vanilla_ms']):>10}")
    if result["skipped"]:
        lines.append(f"skipped: {len(result['skipped'])} (see the JSON)")
    return "\n".join(lines)


def _no_graphs(result: dict) -> str:
    if result["device"]["type"] != "cuda":
        return "not on cpu"
    graphs = result["cuda_graphs"]
    if graphs["error"]:
        return "capture failed: " + graphs["error"].splitlines()[0][:80]
    return "skipped" if graphs["requested"] else "--no-cuda-graphs"


def save(result: dict, out_dir: str | Path) -> Path:
    """Write the full result as `gpu_bench_<cuda|cpu>.json` in out_dir; returns the path."""
    path = Path(out_dir) / f"gpu_bench_{result['device']['type']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")
    return path

