"""Multi-device sessions opened afresh (one process group per process, so none may be open
around them): idle spare ranks, refused settings, a killed or hung rank, and the CLI's trace."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest import tokens_of
from easyspec.core.settings import SpecConfig
from easyspec.core.models.loading import resolve_pair
from easyspec.core.runtime.parallel import DistributedError
from easyspec.core.session import Session

PROMPT = list(range(10, 30))


@pytest.fixture(scope="module")
def source(pair_dirs):
    base, draft = pair_dirs["qwen2"]
    return resolve_pair(str(base), str(draft))


def test_spare_ranks_idle_when_n_is_below_g(source):
    with Session(source, devices=4) as s:
        records = list(s.generate(s.plan(SpecConfig(layer_parallel=2, max_new_tokens=12), PROMPT)))
    idle = {sp.rank for r in records for sp in r.spans if sp.phase == "idle"}
    comm = {sp.rank for r in records for sp in r.spans if sp.phase == "draft.comm"}
    assert idle == {2, 3} and comm == {0, 1}


def test_bad_device_settings_are_refused(source):
    with pytest.raises(ValueError, match="CUDA devices"):
        Session(source, device="cuda", devices=2)
    with pytest.raises(ValueError, match="cannot be split evenly over 3 devices"):
        Session(source, devices=3)


def test_killed_worker_ends_in_a_clear_error_and_a_clean_restart(source):
    with Session(source, devices=2, timeout_s=20) as s:
        procs = s.ranks.procs
        stream = s.generate(s.plan(SpecConfig(layer_parallel=2, max_new_tokens=60), PROMPT))
        next(stream)
        os.kill(procs[0].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(DistributedError, match="rank 1 exited with code -9"):
            list(stream)
        assert time.monotonic() - start < 30
        assert all(not p.is_alive() for p in procs)  # nothing left running
        # the next request starts the ranks again and works
        assert len(tokens_of(s.generate(s.plan(SpecConfig(layer_parallel=2, max_new_tokens=8), PROMPT)))) == 8


def test_hung_worker_times_out(source):
    with Session(source, devices=2, timeout_s=5) as s:
        proc = s.ranks.procs[0]
        stream = s.generate(s.plan(SpecConfig(layer_parallel=2, max_new_tokens=60), PROMPT))
        next(stream)
        os.kill(proc.pid, signal.SIGSTOP)  # still alive, never answers
        start = time.monotonic()
        with pytest.raises(DistributedError, match="stopped answering"):
            list(stream)
        assert time.monotonic() - start < 40
        assert not proc.is_alive()


def test_cli_writes_a_chrome_trace_for_both_ranks(pair_dirs, tmp_path, capsys):
    from easyspec.app.cli import main

    base, draft = pair_dirs["qwen2"]
    trace = tmp_path / "t.json"
    code = main(["generate", "--base", str(base), "--draft", str(draft), "--prompt", "hello", "--devices", "2",
                 "--layer-parallel", "2", "--max-new-tokens", "12", "--json", "--trace", str(trace)])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["devices"] == 2
    data = json.loads(trace.read_text())
    assert data["displayTimeUnit"] == "ms"
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    for phase in ("draft.attn", "draft.mlp", "draft.comm", "verify", "verify.comm", "calibrate"):
        assert {e["pid"] for e in spans if e["cat"] == phase} == {0, 1}, phase
    names = {(e["pid"], e["args"]["name"]) for e in data["traceEvents"] if e.get("name") == "process_name"}
    assert names == {(0, "rank 0 (cpu)"), (1, "rank 1 (cpu)")}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
