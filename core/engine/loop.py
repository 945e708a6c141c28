"""The generation engine: vanilla decoding, speculative decoding and EasySpec, as one generator.

`generate` yields one `RoundRecord` per round (vanilla: one per token). Every consumer (CLI,
dashboard, benchmarks) reads that one stream; there is no second generation path.
It runs a `RunPlan` (settings.py), resolved once per run by planning.py (`Session.plan`).
Modes: `vanilla` (base only), `speculative` (chain of k draft tokens, sequential draft layers),
`easyspec` (fuzzy layer-parallel drafting plus a bonus-calibration policy; docs/method.md).
Either drafting mode can draft a token tree instead of a chain (`tree_depth` > 0; tree.py) and can
adapt its draft length or tree depth from round to round (`adaptive`; `Adaptive` below).
Each round kind of `Generation` returns a `RoundOutcome`; the loop cuts it at a stop and turns it
into the record. The record (records.py), not the outcome, is what leaves this module.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch

from ..settings import RunPlan, check_stop_strings
from .decoder import Decoder, ForwardOptions, KVCache
from .monitor import SEQUENTIAL, AcceptanceMonitor, FallbackGuard, expectation
from .records import RoundRecord, Span
from .sampling import pick, probs, verify_greedy, verify_sampling
from .tracing import Tracer, exclusive_seconds
from .tree import DraftTree, accept_greedy, accept_sampling, expand_greedy, expand_sampled


@dataclass(frozen=True)
class Stopping:
    """End-of-sequence ids and stop strings; `decode` turns ids into text for the stop strings."""

    eos_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    decode: Callable[[Sequence[int]], str] | None = None

    def __post_init__(self) -> None:
        check_stop_strings(self.stop_strings)

    def cut(self, generated: Sequence[int], emitted: Sequence[int], limit: int) -> tuple[int, str | None]:
        """How many of `emitted` to keep after `generated`, and why generation stops (or None)."""
        for i, t in enumerate(emitted):
            if len(generated) + i + 1 > limit:
                return i, "max_new_tokens"
            if t in self.eos_ids:
                return i + 1, "eos"
            if self.stop_strings and self._hits_stop(generated, emitted[: i + 1]):
                return i + 1, "stop_string"
        if len(generated) + len(emitted) >= limit:
            return len(emitted), "max_new_tokens"
        return len(emitted), None

    def _hits_stop(self, generated: Sequence[int], emitted: Sequence[int]) -> bool:
        assert self.decode is not None, "stop strings need a decode function"
        longest = max(len(s) for s in self.stop_strings)
        # Only text that the newest token could have completed a stop string in needs checking.
        before = self.decode(list(generated) + list(emitted[:-1]))
        text = self.decode(list(generated) + list(emitted))
        tail = text[max(0, len(before) - longest + 1):]
        return any(s in tail for s in self.stop_strings)


class Adaptive:
    """Adaptive draft length (chain) or tree depth, as transformers' assisted generation adapts
    `num_assistant_tokens`: +2 after a round that accepted every draft, -1 after one that rejected
    one, between 1 and twice the configured value. Within a round, drafting also stops early once
    the draft's probability of its newest token (for a tree: of the likeliest new node) falls under
    `CONFIDENCE` (transformers' `assistant_confidence_threshold` default). Stopping on the draft's
    own probabilities keeps verification lossless: the draft length is a stopping time of the draft.
    """

    CONFIDENCE = 0.4

    def __init__(self, start: int):
        self.length, self.most = start, 2 * start

    def update(self, drafted: int, accepted: int) -> None:
        self.length = min(self.length + 2, self.most) if accepted == drafted else max(1, self.length - 1)


@dataclass(frozen=True)
class RoundTree:
    """The token tree of a tree round, as its record keeps it: node tokens and parent node indices
    (-1 is the root, the last committed token) in creation order, and the accepted path as node indices."""

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    path: tuple[int, ...] = ()


@dataclass(frozen=True)
class RoundOutcome:
    """What one round kind produced, before the stopping rule cuts it.

    emitted/origins: the round's new tokens, each tagged prefill | accepted | recovered | bonus.
    drafted: the draft's proposals (empty for prefill and base steps; for a tree, the line of
    `Generation._tree_line`); accepted: how many of them the base accepted.
    calibrated: whether the round began with a bonus calibration; tree: the tree of a tree round.
    """

    emitted: tuple[int, ...]
    origins: tuple[str, ...]
    drafted: tuple[int, ...] = ()
    accepted: int = 0
    calibrated: bool = False
    tree: RoundTree | None = None

    def cut(self, keep: int) -> "RoundOutcome":
        """The first `keep` emitted tokens only: drafts past a stop are not output, so not counted as accepted."""
        return replace(self, emitted=self.emitted[:keep], origins=self.origins[:keep],
                       accepted=min(self.accepted, keep))


class LocalRuntime:
    """How a generation meets its devices: one device, so the clock starts here and no spans travel.
    The multi-device runtime (parallel.py) agrees t0 at a barrier and gathers every rank's spans."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> Tracer:
        return Tracer(self.device)

    def gather_spans(self, spans: tuple[Span, ...]) -> tuple[Span, ...]:
        return spans


def generate(base: Decoder, draft: Decoder | None, plan: RunPlan, stopping: Stopping = Stopping(),
             runtime=None) -> Iterator[RoundRecord]:
    """Yield one record per round of a resolved run plan (planning.py) until EOS, a stop string or the
    token limit."""
    assert isinstance(plan, RunPlan), f"the engine runs a resolved RunPlan (Session.plan), not {type(plan).__name__}"
    assert plan.settings.mode == "vanilla" or draft is not None, "checked by the plan"
    run = Generation(base, draft, plan, stopping, runtime)
    yield from run.rounds()


class Generation:
    """State of one generation: token buffer, both KV caches, the tracer and the random generator."""

    def __init__(self, base: Decoder, draft: Decoder | None, run: RunPlan, stopping: Stopping, runtime=None):
        cfg, prompt_ids = run.settings, run.prompt_ids
        self.base, self.draft, self.cfg, self.stopping = base, draft, cfg, stopping
        self.plan = run.layers  # the draft's layer plan (easyspec); None drafts through every layer in order
        self.drafting = cfg.mode != "vanilla"
        self.s = cfg.sampling
        device = base.device
        self.gen = None if self.s.greedy else torch.Generator(device=device).manual_seed(self.s.seed)
        self.n_prompt = len(prompt_ids)
        max_len = self.n_prompt + cfg.max_new_tokens
        self.ids = torch.zeros(max_len, dtype=torch.long, device=device)  # prompt + generated tokens
        self.ids[: self.n_prompt] = torch.tensor(list(prompt_ids), dtype=torch.long)
        self.n = self.n_prompt  # committed tokens; the base cache always holds all but the last
        self.generated: list[int] = []
        # A tree round writes every node past the committed tokens before only its path is kept.
        room = cfg.tree_depth * (1 + cfg.adaptive) * cfg.tree_width if cfg.tree else 0
        self.bcache = base.new_cache(max_len + room)
        self.dcache: KVCache | None = draft.new_cache(max_len + room) if self.drafting else None
        self.exact_len = 0  # draft cache entries before this position are exact
        self.calibrate_next = False
        # Token ids both models can emit (embeddings may be padded differently past the tokenizer).
        self.vocab = min(base.cfg.vocab_size, draft.cfg.vocab_size) if self.drafting else base.cfg.vocab_size
        self.runtime = runtime or LocalRuntime(device)
        self.tracer = self.runtime.start()
        self.monitor = AcceptanceMonitor(expectation(cfg.expected_acceptance))
        self.guard = FallbackGuard(cfg.base_token_s) if self.drafting and cfg.on_low_acceptance == "fallback" else None
        self.calibration = cfg.calibration  # the guard's sequential fallback turns it to every-round
        self.adaptive = Adaptive(cfg.tree_depth if cfg.tree else cfg.draft_len) if cfg.adaptive else None

    # -- main loop ---------------------------------------------------------------------------
    def rounds(self) -> Iterator[RoundRecord]:
        with torch.inference_mode():
            index, stop, start_ns = 0, None, 0  # a round starts where the last ended (the first at t0), so
            while stop is None:  # the phases, overhead included, add up to the run's wall clock
                if index == 0:
                    out = self._prefill()
                elif self.drafting and self._remaining() > 1 and (self.guard is None or self.guard.drafts()):
                    out = self._speculate()
                else:
                    out = self._base_step()
                keep, stop = self.stopping.cut(self.generated, out.emitted, self.cfg.max_new_tokens)
                out = out.cut(keep)
                self._commit(out.emitted)
                record = self._record(index, start_ns, out, stop)
                start_ns = record.end_ns  # time the consumer spends between rounds is the next one's overhead
                yield record
                index += 1

    def _remaining(self) -> int:
        return self.cfg.max_new_tokens - len(self.generated)

    def _logits(self, model: Decoder, tokens: torch.Tensor, pos: int, cache: KVCache,
                opts: ForwardOptions = ForwardOptions()) -> torch.Tensor:  # [T or 1, vocab]
        return model.forward(tokens, pos, cache, opts)[:, : self.vocab]

    # -- round kinds ---------------------------------------------------------------------------
    def _prefill(self) -> RoundOutcome:
        """Round 0: the base reads the prompt and emits the first token; the draft reads the prompt."""
        tr = self.tracer
        with tr.span("verify", "prefill"):
            logits = self._logits(self.base, self.ids[: self.n], 0, self.bcache)
        with tr.span("sample"):
            token = int(pick(logits, self.s, self.gen)[0])
        if self.drafting and not (token in self.stopping.eos_ids or self.cfg.max_new_tokens == 1):
            with tr.span("calibrate", "draft prefill"):  # exact K/V for the whole prompt
                self.draft.forward(self.ids[: self.n], 0, self.dcache)
            self.exact_len = self.n
            # Round 1 reads the prefill token as a calibrating round reads its pending tokens: exactly
            # under every-round and on-mismatch (as the paper's authors do), through the plan under none.
            self.calibrate_next = self.cfg.mode == "easyspec" and self.calibration != "none"
        return RoundOutcome((token,), ("prefill",))

    def _base_step(self) -> RoundOutcome:
        """Vanilla decoding: one base forward, one token (a bonus after zero drafts)."""
        tr = self.tracer
        with tr.span("verify"):
            logits = self._logits(self.base, self.ids[self.n - 1: self.n], self.n - 1, self.bcache)
        with tr.span("sample"):
            token = int(pick(logits, self.s, self.gen)[0])
        return RoundOutcome((token,), ("bonus",))

    def _draft_length(self) -> int:
        """Draft tokens (chain) or tree depth this round, never past the token limit."""
        cfg = self.cfg
        k = self.adaptive.length if self.adaptive else (cfg.tree_depth if cfg.tree else cfg.draft_len)
        return min(k, self._remaining() - 1)

    def _confident(self, own: torch.Tensor) -> bool:
        """Adaptive early stop: does the draft still believe in its newest token(s)? own [m] probs."""
        return self.adaptive is None or float(own.max()) >= Adaptive.CONFIDENCE

    def _speculate(self) -> RoundOutcome:
        """One round of draft-then-verify (steps 1-5 below; steps 2-5 for a tree in `_tree_round`)."""
        cfg, tr, draft, dcache = self.cfg, self.tracer, self.draft, self.dcache
        k = self._draft_length()
        n = self.n
        step = ForwardOptions(groups=self.plan, span=tr.span)  # draft steps run the layer plan, groups timed
        # 1. Feed the draft every committed token it has not read (the last round's accepted tokens
        #    and its recovered/bonus token). When calibrating, the cache was cropped back to the last
        #    exact position, so this one sequential forward rewrites the fuzzy entries exactly and
        #    yields the first draft token (docs/method.md#bonus-calibration); its time is `calibrate`.
        pending = self.ids[dcache.length: n]
        calibrated = self.calibrate_next
        if calibrated:
            with tr.span("calibrate", f"{pending.numel()} tokens"):
                logits = self._logits(draft, pending, dcache.length, dcache)
        else:
            logits = self._logits(draft, pending, dcache.length, dcache, step)
        if calibrated or self.plan is None:
            self.exact_len = n
        if cfg.tree:
            return self._tree_round(logits, k, calibrated)
        # 2. Draft k tokens; steps after the first run the layer plan (fuzzy groups in easyspec).
        #    Tokens stay on the device: no host sync inside the drafting loop (unless adaptive).
        drafted, qs = [], []
        for j in range(k):
            if j > 0:
                logits = self._logits(draft, drafted[-1], dcache.length, dcache, step)
            with tr.span("sample", "draft"):
                token, q = pick(logits, self.s, self.gen)  # token [1], q [1, V] or None
            drafted.append(token)
            qs.append(q)
            if self.adaptive and j < k - 1:
                own = logits.softmax(-1)[0, token] if q is None else q[0, token]
                if not self._confident(own):
                    break
        k = len(drafted)
        drafted_t = torch.cat(drafted)  # [k]
        # 3. Verify: the base reads the last committed token and the k drafts in one forward.
        with tr.span("verify"):
            blogits = self._logits(self.base, torch.cat([self.ids[n - 1: n], drafted_t]), n - 1, self.bcache,
                                   ForwardOptions(all_logits=True))  # [k + 1, V]
        # 4. Accept the longest agreeing prefix (greedy) or rejection-sample (lossless either way).
        with tr.span("sample", "verify"):
            if self.s.greedy:
                accepted, nxt, drafted_ids = verify_greedy(drafted_t, blogits)  # the round's one host copy
            else:
                accepted, nxt = verify_sampling(drafted_t, torch.cat(qs), probs(blogits, self.s), self.gen)
                drafted_ids = drafted_t.tolist()
        emitted = (*drafted_ids[:accepted], nxt)
        origins = ("accepted",) * accepted + ("bonus" if accepted == k else "recovered",)
        # 5. Keep the draft entries of accepted tokens (d_k was never fed to the draft); decide
        #    whether the next round calibrates, and if so drop every fuzzy entry now.
        dcache.crop(n + min(accepted, k - 1))
        self._after_round(k, accepted)
        return RoundOutcome(emitted, origins, tuple(drafted_ids), accepted, calibrated)

    def _tree_round(self, logits: torch.Tensor, depth: int, calibrated: bool) -> RoundOutcome:
        """Steps 2-5 for a token tree (tree.py): draft `depth` levels, verify every node in one base
        forward with a tree attention mask, keep only the accepted path in both caches."""
        cfg, tr, draft, dcache, n = self.cfg, self.tracer, self.draft, self.dcache, self.n
        tree = DraftTree(self.base.device)
        # 2. Level d's nodes come from the draft logits of level d - 1 (the root's: `logits`). Each
        #    level is one draft forward through the layer plan, nodes attending to the committed prefix
        #    and their ancestors; the last level is never fed to the draft (like d_k of a chain).
        for d in range(1, depth + 1):
            if d > 1:
                tokens, att = tree.draft_inputs(n)
                label = f"tree step {d} ({tokens.numel()} nodes)"
                step = ForwardOptions(groups=self.plan, span=lambda phase, text: tr.span(phase, f"{label} {text}"),
                                      all_logits=True, tree=att)
                logits = self._logits(draft, tokens, dcache.length, dcache, step)
            with tr.span("sample", f"tree step {d}"):
                if self.s.greedy:
                    own = expand_greedy(tree, logits, cfg.tree_width)
                else:
                    own = expand_sampled(tree, logits, cfg.tree_width, self.s, self.gen)
            if d < depth and not self._confident(own):
                break
        levels = len(tree.levels)
        # 3. Verify: the base reads the last committed token and every node in one forward.
        tokens, att = tree.verify_inputs(self.ids[n - 1: n], n)
        with tr.span("verify", f"tree of {tree.size} nodes"):
            blogits = self._logits(self.base, tokens, n - 1, self.bcache,
                                   ForwardOptions(all_logits=True, tree=att))  # [M + 1, V]
        # 4. Accept the longest path the base agrees with (greedy) or multi-step speculative sampling.
        with tr.span("sample", "verify"):
            if self.s.greedy:
                path, nxt = accept_greedy(tree, blogits)
            else:
                path, nxt = accept_sampling(tree, probs(blogits, self.s), self.gen)
            node_tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
        leaf = not any(par == (path[-1] if path else -1) for par in parents)
        emitted = (*(node_tokens[i] for i in path), nxt)
        origins = ("accepted",) * len(path) + ("bonus" if leaf else "recovered",)
        # 5. Both caches keep only the accepted path: the base's node i sits at slot n + i (the root
        #    at n - 1); the draft holds the nodes of every level but the last, node i at slot n + i.
        keep = torch.tensor([n + i for i in path], dtype=torch.long, device=self.bcache.k.device)
        self.bcache.compact(n, keep)
        dcache.compact(n, keep[keep < n + tree.levels[-1][0]])
        self._after_round(levels, len(path))
        return RoundOutcome(emitted, origins, self._tree_line(path, parents, node_tokens), len(path), calibrated,
                            tree=RoundTree(tuple(node_tokens), tuple(parents), tuple(path)))

    @staticmethod
    def _tree_line(path: list[int], parents: list[int], tokens: list[int]) -> tuple[int, ...]:
        """The record's `drafted` for a tree: the accepted path continued by first children down to
        a leaf, so that accepted / drafted and per-depth acceptance read as for a chain."""
        line, cur = list(path), (path[-1] if path else -1)
        while (cur := next((i for i, par in enumerate(parents) if par == cur), None)) is not None:
            line.append(cur)
        return tuple(tokens[i] for i in line)

    def _after_round(self, drafted: int, accepted: int) -> None:
        """Adapt the next round's length; decide whether it calibrates, and if so drop every fuzzy
        draft entry now (docs/method.md#bonus-calibration)."""
        cfg = self.cfg
        if self.adaptive:
            self.adaptive.update(drafted, accepted)
        if cfg.mode == "easyspec":
            self.calibrate_next = (self.calibration == "every-round"
                                   or (self.calibration == "on-mismatch" and accepted < drafted))
            if self.calibrate_next:
                self.dcache.crop(self.exact_len)

    def _go_sequential(self) -> None:
        """The guard's first fallback: draft through every layer in order (N = 1) and calibrate every
        round from now on; the next round rewrites the draft's fuzzy cache entries exactly."""
        self.plan = None
        self.calibration = "every-round"
        if self.cfg.mode == "easyspec":
            self.calibrate_next = True
            self.dcache.crop(self.exact_len)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _commit(self, tokens: Sequence[int]) -> None:
        """Append the kept tokens; the base cache keeps all committed tokens but the last."""
        if tokens:  # host to device without waiting for the device (no sync on CUDA)
            self.ids[self.n: self.n + len(tokens)].copy_(torch.tensor(tokens, dtype=torch.long), non_blocking=True)
        self.n += len(tokens)
        self.generated.extend(tokens)
        if self.bcache.length > self.n - 1:
            self.bcache.crop(self.n - 1)
        if self.dcache is not None and self.dcache.length > self.n - 1:
            self.dcache.crop(self.n - 1)
            self.exact_len = min(self.exact_len, self.n - 1)

    def _record(self, index: int, start_ns: int, out: RoundOutcome, stop: str | None) -> RoundRecord:
        own = self.tracer.take()
        end_ns = self.tracer.now_ns()
        phase_s = exclusive_seconds(own)
        phase_s["overhead"] = max(0.0, (end_ns - start_ns) / 1e9 - sum(phase_s.values()))
        spans = self.runtime.gather_spans(own)
        flags = self.monitor.update(len(out.drafted), out.accepted) if out.drafted else ()
        if self.guard is not None and stop is None:
            switch = self.guard.update(flags, bool(out.drafted), (end_ns - start_ns) / 1e9, len(out.emitted))
            flags += switch
            if SEQUENTIAL in switch:
                self._go_sequential()
        tree = out.tree or RoundTree()  # chains, prefill and base steps: no tree
        return RoundRecord(index=index, token_ids=out.emitted, origins=out.origins, drafted=out.drafted,
                           accepted=out.accepted, phase_s=phase_s, spans=spans, end_ns=end_ns,
                           memory_source=self.tracer.memory.source, run_start_memory_bytes=self.tracer.memory.start,
                           run_peak_memory_bytes=self.tracer.memory.peak(), calibrated=out.calibrated,
                           flags=flags, stop=stop, tree_tokens=tree.tokens, tree_parents=tree.parents,
                           tree_path=tree.path)
