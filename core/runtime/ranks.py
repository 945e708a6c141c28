"""Starting and stopping the G ranks of a multi-device session.

Either this process spawns ranks 1..G-1 on this machine (`--devices G`) and becomes rank 0, or
`torchrun` started every rank (several nodes included) and each calls in here with its RANK.
Faults end in a `DistributedError` on rank 0 within the collective timeout: a rank that dies
closes its connections (noticed at once), a rank that hangs trips the timeout; then every rank is
stopped and nothing is left running.
What it is not: the tensor-parallel protocol (`parallel.py`) or the session that uses the ranks
(`session.py`).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import socket

import torch
import torch.distributed as dist

from ..models.loading import PairSource, Shard, load_decoder, load_draft, load_pair, parse_dtype
from .parallel import DistInfo, DistributedError, Leader, cpu_threads_per_rank, follow, init_group, rank_device

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_placement(rank: int, world: int) -> tuple[int, int]:
    """(this rank's index on its machine, ranks on its machine): torchrun's LOCAL_RANK and
    LOCAL_WORLD_SIZE (several nodes), else every rank on this machine (the ranks we spawn)."""
    if launched_by_torchrun():
        return int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return rank, world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_follower_models(source: PairSource, dtype: str, shard: Shard, device: torch.device,
                          draft_dtype: str | None = None):
    base = load_decoder(source.base_dir, parse_dtype(dtype), device, shard)
    draft = load_draft(source.draft_dir, draft_dtype or dtype, device) if source.draft_dir else None
    return base, draft


def run_follower(rank: int, world: int, init_method: str, source: PairSource, dtype: str, device_kind: str,
                 timeout_s: float, draft_dtype: str | None = None) -> None:
    """Body of ranks 1..G-1: join, load this rank's shard and the draft, follow rank 0 until told to exit."""
    local_rank, local_world = local_placement(rank, world)
    if device_kind == "cpu":
        torch.set_num_threads(cpu_threads_per_rank(local_world))
    device = rank_device(device_kind, local_rank, local_world)
    info = init_group(rank, world, device, init_method, timeout_s)
    try:
        base, draft = _load_follower_models(source, dtype, Shard(rank, world), device, draft_dtype)
        dist.barrier()
        follow(info, base, draft)
    finally:
        dist.destroy_process_group()


def _spawned_follower(*args) -> None:
    try:
        run_follower(*args)
    except BaseException as exc:  # report in one line; rank 0 turns the broken collective into an error
        # A spawned rank has no logging set up: Python's last-resort handler writes the bare line to stderr.
        logger.error("easyspec rank %s: %s: %s", args[0], type(exc).__name__, exc)
        logging.shutdown()  # flush it: os._exit skips the interpreter's own shutdown
        os._exit(1)


class Ranks:
    """Rank 0's handle on the group: its models, the leader, and the follower processes it spawned."""

    def __init__(self, info: DistInfo, pair, leader: Leader, procs: list, threads: int):
        self.info, self.pair, self.leader, self.procs, self._threads = info, pair, leader, procs, threads

    @classmethod
    def start(cls, source: PairSource, dtype: str, device_kind: str, world: int, timeout_s: float,
              draft_dtype: str | None = None) -> "Ranks":
        if dist.is_initialized():
            raise ValueError("this process already runs a multi-device session (one process group per "
                             "process): close it before opening another")
        threads = torch.get_num_threads()
        procs = []
        if launched_by_torchrun():
            if int(os.environ["WORLD_SIZE"]) != world or int(os.environ["RANK"]) != 0:
                raise ValueError(f"torchrun started {os.environ['WORLD_SIZE']} ranks but --devices is {world}; "
                                 f"give the same number (and run this on RANK 0 only)")
            init_method = "env://"
        else:
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        local_rank, local_world = local_placement(0, world)
        device = rank_device(device_kind, local_rank, local_world)
        if not launched_by_torchrun():
            ctx = mp.get_context("spawn")
            for rank in range(1, world):
                p = ctx.Process(target=_spawned_follower, daemon=True, name=f"easyspec-rank{rank}",
                                args=(rank, world, init_method, source, dtype, device_kind, timeout_s, draft_dtype))
                p.start()
                procs.append(p)
        try:
            if device_kind == "cpu":
                torch.set_num_threads(cpu_threads_per_rank(local_world))
            info = init_group(0, world, device, init_method, timeout_s)
            pair = load_pair(source, dtype, shard=Shard(0, world), torch_device=device, draft_dtype=draft_dtype)
            dist.barrier()
            leader = Leader(info, pair.base.decoder, pair.draft.decoder if pair.draft else None)
        except BaseException as exc:
            ranks = cls(None, None, None, procs, threads)
            ranks.abort()
            if isinstance(exc, ValueError):
                raise
            raise ranks.failure(exc) from None
        return cls(info, pair, leader, procs, threads)

    def failure(self, exc: BaseException) -> DistributedError:
        """A readable account of a failed collective: which ranks died, or that one hung."""
        for p in self.procs:
            p.join(timeout=2)
        dead = [f"rank {i + 1} exited with code {p.exitcode}" for i, p in enumerate(self.procs)
                if p.exitcode is not None]
        gist = re.sub(r"^\[[^\]]*\] ", "", (str(exc).splitlines() or [""])[0])  # drop gloo's source location
        what = "; ".join(dead) if dead else f"a rank stopped answering ({type(exc).__name__}: {gist})"
        return DistributedError(f"multi-device run failed: {what}. All ranks were stopped; the next run "
                                f"starts them again.")

    def alive(self) -> bool:
        """Whether every follower this process spawned is still running."""
        return all(p.is_alive() for p in self.procs)

    def abort(self) -> None:
        """Stop every follower now and leave the process group; nothing is left running."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._leave()

    def stop(self) -> None:
        """Orderly shutdown: tell the followers to exit, wait for them, leave the group."""
        try:
            self.leader.close()
        except Exception:
            pass
        for p in self.procs:
            p.join(timeout=10)
        self.abort()

    def _leave(self) -> None:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
        torch.set_num_threads(self._threads)
