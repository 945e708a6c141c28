"""The load script (`benchmarks/load.py`) against the app on the small random pair: 16 concurrent
clients, mixed requests (every mode, short and long prompts, Compare, Pilot, replays, cancels,
invalid input). Every request ends with its result or a clear error, none hangs or is lost, greedy
results equal the same request run alone, and the app's memory stays bounded. The same 200-request
run on the real pair is in results/reliability.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load.py"


def test_load_on_the_small_pair(app_server, tmp_path):
    url, proc = app_server
    out = tmp_path / "load"
    run = subprocess.run([sys.executable, str(SCRIPT), "--url", url, "--app-pid", str(proc.pid), "--clients", "16",
                          "--requests", "200", "--distinct", "10", "--short-tokens", "4", "--long-tokens", "8",
                          "--deadline-s", "300", "--out", str(out)], capture_output=True, text=True, timeout=900)
    result = json.loads((tmp_path / "load.json").read_text())
    assert run.returncode == 0, (result["checks"], result["unexpected"], run.stderr[-2000:])
    assert result["requests"] == 200 and result["lost"] == 0 and result["hung"] == 0 and result["errors"] == 0
    kinds = result["by_kind"]
    assert {"generate", "compare", "pilot", "replay", "cancel", "invalid"} <= set(kinds)
    assert result["served"] + result["rejected_invalid"] + result["cancelled"] == 200
    assert kinds["invalid"] == {"rejected": kinds["invalid"]["rejected"]}  # each got its specific message
    assert result["greedy_checked_alone"] >= 5 and not result["greedy_mismatches"]
    m = result["memory"]
    assert m["peak_mb"] > 0 and m["second_half_growth_mb"] <= m["allowance_mb"]
    assert m["peak_by_quarter_mb"] == sorted(m["peak_by_quarter_mb"])
    assert result["latency_s"]["p50"] <= result["latency_s"]["p95"]
    assert "| requests | clients | served |" in (tmp_path / "load.md").read_text()
    assert proc.poll() is None  # the app is still up
