"""Per-round records: metric definitions on hand-made rounds, and save/replay of a real run."""
from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import tokens_of
from easyspec.core.engine import metrics
from easyspec.core.planning import plan_run
from easyspec.core.engine.loop import generate
from easyspec.core.settings import SpecConfig
from easyspec.core.engine.records import RECORD_VERSION, RoundRecord, RunHeader, load_run, save_run


def _round(index, tokens, origins, drafted, accepted, end_ms, phase_s=None):
    return RoundRecord(index=index, token_ids=tuple(tokens), origins=tuple(origins), drafted=tuple(drafted),
                       accepted=accepted, phase_s=phase_s or {}, spans=(), end_ns=int(end_ms * 1e6))


def test_metric_definitions():
    recs = [
        _round(0, [5], ["prefill"], [], 0, 100, {"verify": 0.09}),
        _round(1, [1, 2, 3, 4], ["accepted"] * 3 + ["bonus"], [1, 2, 3], 3, 200, {"draft.attn": 0.02, "verify": 0.05}),
        _round(2, [6, 9], ["accepted", "recovered"], [6, 7, 8], 1, 300, {"calibrate": 0.01, "draft.mlp": 0.03}),
        _round(3, [10], ["recovered"], [11, 12, 13], 0, 400),
    ]
    m = metrics.compute(recs)
    assert m.new_tokens == 8 and m.rounds == 3 and m.drafted == 9 and m.accepted == 4
    assert m.acceptance_rate == pytest.approx(4 / 9)
    assert m.mean_accepted_length == pytest.approx(7 / 3)  # emitted per drafting round, bonus included
    assert m.per_position_acceptance == pytest.approx((2 / 3, 1 / 3, 1 / 3))
    assert m.time_to_first_token_s == pytest.approx(0.1) and m.total_s == pytest.approx(0.4)
    assert m.tokens_per_s == pytest.approx(20.0)
    assert m.time_per_output_token_s == pytest.approx(0.3 / 7)
    assert m.draft_s == pytest.approx(0.05) and m.verify_s == pytest.approx(0.14)
    assert m.calibrate_s == pytest.approx(0.01)


def test_vanilla_metrics_have_no_acceptance(decoders):
    base, _ = decoders["qwen2"]
    m = metrics.compute(list(generate(base, None, plan_run(SpecConfig(mode="vanilla", max_new_tokens=6), [3, 4, 5],
                                                           base, None))))
    assert m.acceptance_rate is None and m.mean_accepted_length is None and m.rounds == 5 and m.new_tokens == 6


def test_records_carry_spans_on_one_clock(decoders):
    base, draft = decoders["qwen2"]
    records = list(generate(base, draft, plan_run(SpecConfig(max_new_tokens=20), [3, 4, 5, 6], base, draft)))
    phases = {s.phase for r in records for s in r.spans}
    assert {"verify", "calibrate", "draft.attn", "draft.mlp", "sample"} <= phases
    ends = [r.end_ns for r in records]
    assert ends == sorted(ends)
    for r in records:
        for s in r.spans:
            assert 0 <= s.start_ns <= s.end_ns <= r.end_ns
        assert r.phase_s["overhead"] >= 0
    labels = {s.label for r in records for s in r.spans if s.phase == "draft.attn"}
    assert "L1-4" in labels and "L0" in labels  # grouped middle layers, sequential first layer


def test_phases_add_up_to_the_wall_clock_also_when_the_consumer_is_slow(decoders):
    base, draft = decoders["qwen2"]
    records = []
    for r in generate(base, draft, plan_run(SpecConfig(max_new_tokens=12), [3, 4, 5, 6], base, draft)):
        records.append(r)
        time.sleep(0.01)  # a dashboard drawing between rounds: that time is the next round's overhead
    m = metrics.compute(records)
    assert sum(sum(r.phase_s.values()) for r in records) == pytest.approx(m.total_s, rel=1e-9)
    assert sum(r.phase_s["overhead"] for r in records[1:]) >= 0.01 * (len(records) - 1)


def test_save_and_replay_a_run(decoders, tmp_path):
    base, draft = decoders["qwen2"]
    cfg = SpecConfig(max_new_tokens=12)
    records = list(generate(base, draft, plan_run(cfg, [3, 4, 5], base, draft)))
    header = RunHeader(settings=cfg.as_dict(), base="b", draft="d", prompt_ids=(3, 4, 5), device="cpu",
                       dtype="float32")
    path = tmp_path / "run.jsonl"
    save_run(path, header, records)
    lines = path.read_text().splitlines()
    assert len(lines) == len(records) + 1 and json.loads(lines[0])["kind"] == "header"
    header2, records2 = load_run(path)
    assert header2.settings == header.settings and records2 == records
    assert SpecConfig.from_dict(header2.settings) == cfg
    assert tokens_of(records2) == tokens_of(records)
    assert metrics.compute(records2) == metrics.compute(records)


def test_replay_refuses_other_versions(tmp_path):
    bad = tmp_path / "old.jsonl"
    bad.write_text(json.dumps({"kind": "header", "version": 99}) + "\n")
    with pytest.raises(ValueError, match="version"):
        load_run(bad)
    (tmp_path / "junk.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="not an easyspec run"):
        load_run(tmp_path / "junk.jsonl")


def test_each_run_reports_its_own_peak_memory(decoders):
    """Two runs in one process, the first holding 512 MiB more while it runs: the second's peak must not
    inherit the first's (ru_maxrss, the process's lifetime peak, gave every later run the largest's figure)."""
    base, draft = decoders["qwen2"]
    cfg = SpecConfig(max_new_tokens=8)
    first, held = [], []
    for rec in generate(base, draft, plan_run(cfg, [3, 4, 5], base, draft)):
        first.append(rec)
        if not held:  # allocated (and touched) between rounds: the next round's samples see it
            held.append(torch.ones(2**27))  # 512 MiB of float32
    held.clear()  # a large block goes back to the OS on free (glibc maps it on its own)
    second = list(generate(base, draft, plan_run(cfg, [3, 4, 5], base, draft)))
    one, two = metrics.compute(first), metrics.compute(second)
    assert one.memory_source == two.memory_source == "rss"
    assert one.run_peak_memory_bytes - two.run_peak_memory_bytes > 400 * 2**20, (one, two)
    assert one.run_memory_growth_bytes > 400 * 2**20 > two.run_memory_growth_bytes
    for records in (first, second):  # the start is the run's, the peak only grows from round to round
        assert len({r.run_start_memory_bytes for r in records}) == 1
        peaks = [r.run_peak_memory_bytes for r in records]
        assert peaks == sorted(peaks) and peaks[0] >= records[0].run_start_memory_bytes > 0


def test_version_1_run_files_still_load_without_their_lifetime_peak(tmp_path):
    """A version 1 file's peak_memory_bytes was the process's lifetime peak, not the run's: loaded as unknown."""
    from importlib import resources

    with resources.as_file(resources.files("easyspec.assets").joinpath("demo_run_speculative.jsonl")) as path:
        shipped = [json.loads(line) for line in path.read_text().splitlines()]
    run_keys = ("memory_source", "run_start_memory_bytes", "run_peak_memory_bytes")
    old = [{**shipped[0], "version": 1}] + [  # the same run written as version 1 wrote it
        {**{k: v for k, v in r.items() if k not in run_keys}, "version": 1, "peak_memory_bytes": 13_700_000_000}
        for r in shipped[1:]
    ]
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(d) + "\n" for d in old))
    header, records = load_run(tmp_path / "old.jsonl")
    assert header.version == RECORD_VERSION == 2 and len(records) == len(old) - 1
    assert all(r.run_peak_memory_bytes == 0 and r.memory_source == "" for r in records)
    assert [list(r.token_ids) for r in records] == [r["token_ids"] for r in shipped[1:]]  # nothing else is lost
    assert metrics.compute(records).run_peak_memory_bytes == 0  # the cards hide an unknown peak
    save_run(tmp_path / "again.jsonl", header, records)  # saved again: version 2, read back the same
    assert load_run(tmp_path / "again.jsonl")[1] == records
