"""Host syncs: at most one device-to-host read per round on the greedy chain path (the emitted tokens), none
inside drafting or verification, and none per forward on a follower rank (core/runtime/parallel.py).

A read is any call that turns tensor data into Python values (tolist, item, int(), float(), bool(), index,
cpu, numpy): on a GPU each waits for the device. The count patches those methods of torch.Tensor."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from easyspec.core.engine.loop import generate
from easyspec.core.planning import plan_run
from easyspec.core.runtime.parallel import DistInfo, Leader, follow
from easyspec.core.settings import SpecConfig

PROMPT = list(range(10, 30))
READS = ("tolist", "item", "__int__", "__float__", "__bool__", "__index__", "cpu", "numpy")


@pytest.fixture
def reads(monkeypatch):
    """A list that gets (method, tensor) for every tensor-to-Python read while the test runs."""
    seen: list[tuple[str, torch.Tensor]] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __name=name, __original=original, **kwargs):
            seen.append((__name, self))
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


@pytest.mark.parametrize("settings", [dict(mode="vanilla"), dict(mode="speculative", draft_len=4),
                                      dict(mode="easyspec", layer_parallel=2, calibration="on-mismatch", draft_len=4),
                                      dict(mode="easyspec", layer_parallel=3, calibration="none", draft_len=3)],
                         ids=["vanilla", "speculative", "easyspec-on-mismatch", "easyspec-none"])
def test_greedy_chain_reads_the_device_once_per_round(decoders, reads, settings):
    base, draft = decoders["qwen2"]
    plan = plan_run(SpecConfig(max_new_tokens=24, **settings), PROMPT, base, draft)
    per_round, last = [], 0
    for record in generate(base, draft, plan):
        per_round.append(len(reads) - last)
        last = len(reads)
    assert len(per_round) > 2 and max(per_round) == 1, (per_round, [n for n, _ in reads[:12]])
    if settings["mode"] != "vanilla":
        assert len(per_round) < 24, "no round emitted more than one token: the test exercises no drafting"


def test_a_follower_reads_no_device_value_per_forward(decoders, reads, monkeypatch):
    """Rank 0's announcements of a whole easyspec run, recorded, then replayed into a follower's loop: every
    value the follower reads comes from the host-side command group, none from a device tensor."""
    base, draft = decoders["qwen2"]
    commands = object()  # stands for the gloo group of the command headers
    info = DistInfo(0, 1, torch.device("cpu"), control=commands)
    sent: list[tuple[torch.Tensor, bool]] = []  # (tensor, whether on the command group)
    monkeypatch.setattr(dist, "broadcast", lambda t, src, group=None: sent.append((t.clone(), group is commands)))
    monkeypatch.setattr(dist, "barrier", lambda group=None: None)
    monkeypatch.setattr(dist, "gather_object", lambda obj, out, dst=0, group=None: out and out.__setitem__(0, obj))
    leader = Leader(info, base, draft)
    cfg = SpecConfig(mode="easyspec", layer_parallel=2, calibration="on-mismatch", draft_len=4, max_new_tokens=16)
    list(generate(leader.base, leader.draft, plan_run(cfg, PROMPT, base, draft), runtime=leader))
    leader.close()
    forwards = sum(1 for t, on_commands in sent if on_commands and t.numel() == 9 and t.tolist()[0] == 3)  # OP_FORWARD
    reads.clear()

    queue, host = iter(sent), []

    def receive(t, src, group=None):
        value, on_commands = next(queue)
        assert on_commands == (group is commands) and t.device.type == "cpu", "a message on the wrong group"
        t.copy_(value)
        if on_commands:
            host.append(t)

    monkeypatch.setattr(dist, "broadcast", receive)
    follow(info, base, draft)
    assert next(queue, None) is None, "the follower stopped before the leader's last message"
    device_reads = [name for name, t in reads if not any(t is h for h in host)]
    assert forwards > 10 and device_reads == [], device_reads
    assert len(reads) > forwards  # the header reads were counted: the count sees the follower's loop


def test_the_count_sees_a_read(reads):
    """The counter itself: a read of each kind is counted."""
    t = torch.tensor([3])
    t.tolist(), int(t), t.item(), bool(t), float(t)
    assert [name for name, _ in reads] == ["tolist", "__int__", "item", "__bool__", "__float__"]
