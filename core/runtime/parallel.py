"""Multi-device runtime on torch.distributed: the base tensor-parallel over G ranks, the draft's
fuzzy groups spread over the same ranks (docs/method.md#multi-device-form).

- Base: Megatron-style shards loaded per rank (`loading.Shard`); an all-reduce after o_proj and
  down_proj is installed as the decoder's `reduce` hook. Embedding, norms and LM head stay whole.
- Draft: a full copy on every rank. In a fuzzy group of N <= G layers rank r computes the attention
  of the group's r-th layer from the shared group input, an all-gather brings the N outputs to every
  rank, and every rank runs the N MLPs. Sequential layers and calibration run on every rank, so all
  ranks hold the same exact draft cache after calibration. Ranks >= N idle in that group.
- Control: rank 0 (the leader) runs the engine loop unchanged; each model call is first announced
  to the other ranks (followers) by a small broadcast, then all ranks run it together. The command
  header (and a new layer plan) travels in host memory over a gloo group (`DistInfo.control`; on CPU
  ranks the group itself), so a follower reads it without a device-to-host copy; token ids and tree
  attention travel on the device group, straight into the follower's forward. A token-tree
  call also sends its tree attention (positions and the visible tree slots, one [T, 1 + W] tensor),
  and keeping a tree's accepted path in a cache (`KVCache.compact`) is announced too. Rank 0 owns
  the tokenizer, sampling and acceptance; followers never compute logits.
- Clock: t0 is agreed at a barrier at the start of each generation; rank 0 gathers every rank's
  spans once per round. gloo on CPU, NCCL on GPUs: the same code apart from backend and device.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.distributed as dist

from ..settings import Group
from ..engine.decoder import Decoder, ForwardOptions, KVCache, TreeAttention
from ..engine.records import Span
from ..engine.tracing import Tracer

OP_EXIT, OP_CLOCK, OP_CACHE, OP_FORWARD, OP_GATHER, OP_PING, OP_COMPACT = range(7)  # OP_PING: nothing to do
BASE, DRAFT = 0, 1
PH_VERIFY, PH_CALIBRATE, PH_DRAFT = range(3)
HEADER = 9  # [op, model, pos, n_tokens, phase, plan follows, use plan, cache length, tree columns]


class DistributedError(RuntimeError):
    """A rank died, hung past the timeout, or a collective failed; the message says which."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device
    group: object = None  # the process group; None is the default (world) group
    control: object = None  # the gloo group of the host-side command headers; None: `group` (CPU ranks)

    @property
    def commands(self) -> object:
        return self.group if self.control is None else self.control


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class RankState:
    """What the hooks of one rank need at call time: its tracer (new for every generation)."""

    def __init__(self, info: DistInfo):
        self.info = info
        self.tracer = Tracer(info.device, info.rank)


def install_tensor_parallel(base: Decoder, state: RankState) -> None:
    """Sum the partial o_proj / down_proj outputs of the base's shards over all ranks."""
    group = state.info.group

    def reduce(x: torch.Tensor) -> torch.Tensor:  # x [..., T, D], partial sums -> full sums
        with state.tracer.span("verify.comm"):
            dist.all_reduce(x, group=group)
        return x

    base.reduce = reduce


def install_layer_parallel(draft: Decoder, state: RankState) -> None:
    """Run each fuzzy group's attentions one per rank and all-gather them (sequential layers local)."""
    local, info = draft._attention, state.info

    def attend(h: torch.Tensor, g: Group, pos: int, cache: KVCache, rope, mask) -> torch.Tensor:
        l, r = g
        n = r - l
        if n == 1:
            return local(h, g, pos, cache, rope, mask)  # [1, T, D], the same on every rank
        assert n <= info.world, f"group of {n} layers over {info.world} ranks"
        label = f"L{l}-{r - 1}"
        if info.rank < n:  # this rank's layer l + rank, from the shared group input h
            mine, phase = local(h, (l + info.rank, l + info.rank + 1), pos, cache, rope, mask), "draft.comm"
        else:  # spare rank in this group: nothing to compute, it waits for the others
            mine, phase = h.new_zeros((1, *h.shape)), "idle"
        parts = [torch.empty_like(mine) for _ in range(info.world)]  # world x [1, T, D]
        with state.tracer.span(phase, label):
            dist.all_gather(parts, mine, group=info.group)
        return torch.cat(parts[:n])  # [N, T, D]

    draft.attend = attend


def plan_mask(groups: Sequence[Group] | None, n_layers: int) -> torch.Tensor:
    """[n_layers] int64: 1 where a group starts (all ones is the exact sequential plan)."""
    mask = torch.zeros(n_layers, dtype=torch.long)
    for start, _ in groups or [(i, i + 1) for i in range(n_layers)]:
        mask[start] = 1
    return mask


def plan_from_mask(mask: torch.Tensor) -> tuple[Group, ...]:  # mask [n_layers] int64 in host memory
    starts = [i for i, start in enumerate(mask.tolist()) if start]
    return tuple(zip(starts, starts[1:] + [mask.numel()]))


class Leader:
    """Rank 0: the engine's runtime (clock and span gathering) and the announcer of model calls."""

    def __init__(self, info: DistInfo, base: Decoder, draft: Decoder | None):
        self.info = info
        self.state = RankState(info)
        if info.world > 1:
            install_tensor_parallel(base, self.state)
            if draft is not None:
                install_layer_parallel(draft, self.state)
        self.base = Announced(self, BASE, base)
        self.draft = Announced(self, DRAFT, draft) if draft is not None else None
        self._plan_sent: tuple | None = None

    def announce(self, op: int, model: int = 0, pos: int = 0, tokens: torch.Tensor | None = None,
                 phase: int = 0, plan: Sequence[Group] | None = None, use_plan: bool = False,
                 length: int = 0, tree: TreeAttention | None = None) -> None:
        """Broadcast one command (and its token ids, layer plan and tree attention when they travel)."""
        plan_key = tuple(plan) if plan is not None else None
        send_plan = use_plan and plan_key != self._plan_sent
        n = 0 if tokens is None else tokens.numel()
        tree_cols = 0 if tree is None else 1 + tree.visible.shape[1]
        header = torch.tensor([op, model, pos, n, phase, int(send_plan), int(use_plan), length, tree_cols],
                              dtype=torch.long)  # host memory, on the command group
        dist.broadcast(header, 0, group=self.info.commands)
        if n:
            dist.broadcast(tokens.to(torch.long), 0, group=self.info.group)
        if tree is not None:  # [T, 1 + W]: positions, then the visible tree slots as 0/1
            packed = torch.cat([tree.positions[:, None], tree.visible.long()], dim=1).to(self.info.device)
            dist.broadcast(packed, 0, group=self.info.group)
        if send_plan:
            dist.broadcast(plan_mask(plan, self.draft.cfg.n_layers), 0, group=self.info.commands)
            self._plan_sent = plan_key

    # -- the engine's runtime interface ---------------------------------------------------------
    def start(self) -> Tracer:
        """Agree t0 at a barrier; every rank starts a fresh tracer on it."""
        self.announce(OP_CLOCK)
        dist.barrier(group=self.info.group)
        self.state.tracer = Tracer(self.info.device, 0, time.perf_counter_ns())
        return self.state.tracer

    def gather_spans(self, spans: tuple[Span, ...]) -> tuple[Span, ...]:
        self.announce(OP_GATHER)
        out: list = [None] * self.info.world
        dist.gather_object(spans, out, dst=0, group=self.info.commands)  # host objects: the gloo group
        return tuple(sorted((s for rank_spans in out for s in rank_spans), key=lambda s: (s.start_ns, s.rank)))

    def ping(self) -> None:
        """Tell idle followers that rank 0 is still here (they wait inside a collective that times out)."""
        self.announce(OP_PING)

    def close(self) -> None:
        self.announce(OP_EXIT)


class Announced:
    """Rank 0's view of a decoder: each call is announced to the followers, then run here too."""

    def __init__(self, leader: Leader, which: int, decoder: Decoder):
        self.leader, self.which, self.decoder = leader, which, decoder
        self.cfg, self.device, self.dtype = decoder.cfg, decoder.device, decoder.dtype

    def new_cache(self, max_len: int) -> KVCache:
        self.leader.announce(OP_CACHE, self.which, length=max_len)
        return AnnouncedCache(self, max_len)

    def forward(self, tokens: torch.Tensor, pos: int, cache: KVCache,
                opts: ForwardOptions = ForwardOptions()) -> torch.Tensor | None:
        """Announce the call (its plan, tree and whether it is a timed draft step), then run it here
        with the same options. The followers rebuild theirs from the announcement, without logits or
        taps: those are rank 0's alone."""
        if self.which == BASE:
            phase = PH_VERIFY
        else:
            phase = PH_DRAFT if opts.span is not None else PH_CALIBRATE
        self.leader.announce(OP_FORWARD, self.which, pos, tokens, phase, opts.groups, opts.groups is not None,
                             tree=opts.tree)
        return self.decoder.forward(tokens, pos, cache, opts)


class AnnouncedCache(KVCache):
    """Rank 0's cache of one model: compactions are announced, so every rank keeps the same entries
    (crops need no message: each forward tells the followers where their cache ends)."""

    def __init__(self, owner: Announced, max_len: int):
        super().__init__(owner.cfg, max_len, owner.dtype, owner.device)
        self.owner = owner

    def compact(self, start: int, keep: torch.Tensor) -> None:
        self.owner.leader.announce(OP_COMPACT, self.owner.which, start, keep, length=self.length)
        super().compact(start, keep)


def follow(info: DistInfo, base: Decoder, draft: Decoder | None) -> None:
    """A follower rank's loop: receive each announced command and run its part, until OP_EXIT."""
    state = RankState(info)
    if info.world > 1:
        install_tensor_parallel(base, state)
        if draft is not None:
            install_layer_parallel(draft, state)
    models = {BASE: base, DRAFT: draft}
    caches: dict[int, KVCache] = {}
    plan: tuple[Group, ...] | None = None
    header = torch.zeros(HEADER, dtype=torch.long)  # host memory: reading it waits for no device
    with torch.inference_mode():
        while True:
            dist.broadcast(header, 0, group=info.commands)
            op, which, pos, n, phase, plan_follows, use_plan, length, tree_cols = header.tolist()
            if op == OP_EXIT:
                return
            if op == OP_CLOCK:
                dist.barrier(group=info.group)
                state.tracer = Tracer(info.device, info.rank, time.perf_counter_ns())
            elif op == OP_CACHE:
                caches[which] = models[which].new_cache(length)
            elif op == OP_GATHER:
                dist.gather_object(state.tracer.take(), None, dst=0, group=info.commands)
            elif op == OP_COMPACT:
                keep = torch.empty(n, dtype=torch.long, device=info.device)
                if n:
                    dist.broadcast(keep, 0, group=info.group)
                caches[which].length = length
                caches[which].compact(pos, keep)
            elif op == OP_FORWARD:
                tokens = torch.empty(n, dtype=torch.long, device=info.device)
                dist.broadcast(tokens, 0, group=info.group)
                tree = None
                if tree_cols:
                    packed = torch.empty((n, tree_cols), dtype=torch.long, device=info.device)
                    dist.broadcast(packed, 0, group=info.group)
                    tree = TreeAttention(packed[:, 0], packed[:, 1:].bool())
                if plan_follows:
                    mask = torch.empty(draft.cfg.n_layers, dtype=torch.long)  # host memory, as the header
                    dist.broadcast(mask, 0, group=info.commands)
                    plan = plan_from_mask(mask)
                cache = caches[which]
                cache.length = pos  # the leader cropped its cache to here; crop ours the same
                opts = ForwardOptions(groups=plan if use_plan else None, logits=False, tree=tree)
                if phase == PH_DRAFT:
                    models[which].forward(tokens, pos, cache, replace(opts, span=state.tracer.span))
                else:
                    with state.tracer.span("verify" if phase == PH_VERIFY else "calibrate"):
                        models[which].forward(tokens, pos, cache, opts)


def init_group(rank: int, world: int, device: torch.device, init_method: str, timeout_s: float) -> DistInfo:
    """Join the process group (gloo on CPU, NCCL on GPUs) with a bounded collective timeout; on GPUs also a
    gloo group for the command headers, which stay in host memory."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend_for(device), init_method=init_method, rank=rank, world_size=world,
                            timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else None
    return DistInfo(rank, world, device, control=control)


def rank_device(kind: str, local_rank: int, local_world: int) -> torch.device:
    """This rank's device: CUDA device `local_rank` of the `local_world` ranks on this machine (on
    several nodes each node counts only its own ranks and GPUs, never the whole world)."""
    if kind == "cuda":
        available = torch.cuda.device_count()
        if available < local_world:
            raise ValueError(f"{local_world} ranks on this machine (--devices, or torchrun's LOCAL_WORLD_SIZE) "
                             f"need {local_world} CUDA devices, but it has {available}")
        return torch.device("cuda", local_rank)
    if kind != "cpu":
        raise ValueError(f"unknown device {kind!r}: choose cpu or cuda")
    return torch.device("cpu")


def cpu_threads_per_rank(world: int) -> int:
    """CPU ranks share the machine's cores: give each an equal share, at least one."""
    return max(1, (os.cpu_count() or 1) // world)
