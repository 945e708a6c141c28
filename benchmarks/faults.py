"""Fault figures for results/reliability.md: each fault injected on a small random pair, with the
message it ends in, the seconds from the fault to that message, and whether the next request works.

The same faults are asserted by tests/test_faults.py (app and command line); this script records
what happened, for the results file. Multi-device faults use a Session with G = 2 CPU ranks.
Every row is one measured run; `CRITERIA` (fixed here, written to OUT.json before the first fault)
says what each fault must end in, and each row's `passed` is computed from its measured fields.
What it is not: the tests (tests/test_faults.py asserts; this records) or a load test (`load.py`).

    python benchmarks/faults.py --out results/reliability_faults
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import make_pair  # noqa: E402

from easyspec.app.cli import main as cli  # noqa: E402
from easyspec.core.evaluation.bench import git_commit, machine  # noqa: E402
from easyspec.core.settings import SpecConfig  # noqa: E402
from easyspec.core.files import atomic_writer, write_text_atomic  # noqa: E402
from easyspec.core.models.loading import resolve_pair  # noqa: E402
from easyspec.core.session import Session  # noqa: E402

PROMPT = list(range(10, 30))
IDLE_S, IDLE_TIMEOUT_S = 20.0, 8.0  # idle for longer than the collective timeout
# Fixed before the run: what a fault must end in (the row's fields that are judged).
CRITERIA = {
    "rank_fault_error_within_s": 30.0,  # a dead or stopped rank ends the run with a message within this
    "next_request_ok": True,  # where measured: the next request gives the same tokens as before the fault
    "nothing_left_running": True,  # no rank process and no non-daemon thread left over
    "exit_code": "nonzero for a command that fails (1 or 2), with one 'easyspec: error' line",
    "write_interrupted": "the old file intact and no temporary file left",
}


def tokens(stream) -> list[int]:
    return [t for r in stream for t in r.token_ids]


def rank_fault(source, sig: int, timeout_s: float) -> dict:
    """Send `sig` to rank 1 after the first round of a long run; time until the error."""
    with Session(source, devices=2, timeout_s=timeout_s) as s:
        cfg = SpecConfig(layer_parallel=2, max_new_tokens=400)
        before = tokens(s.generate(s.plan(SpecConfig(layer_parallel=2, max_new_tokens=12), PROMPT)))
        proc = s.ranks.procs[0]
        stream = s.generate(s.plan(cfg, PROMPT))
        next(stream)
        os.kill(proc.pid, sig)
        start = time.monotonic()
        try:
            list(stream)
            message = "(no error)"
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - start
        left = proc.is_alive()
        after = tokens(s.generate(s.plan(SpecConfig(layer_parallel=2, max_new_tokens=12), PROMPT)))
    return {"seconds_to_error": round(seconds, 2), "message": message, "next_request_ok": after == before,
            "left_running": left}


def idle_past_timeout(source) -> dict:
    """No request for IDLE_S with a collective timeout of IDLE_TIMEOUT_S; then a request."""
    cfg = SpecConfig(layer_parallel=2, max_new_tokens=12)
    with Session(source, devices=2, timeout_s=IDLE_TIMEOUT_S) as s:
        before = tokens(s.generate(s.plan(cfg, PROMPT)))
        pids = [p.pid for p in s.ranks.procs]
        time.sleep(IDLE_S)
        message, after = _try(lambda: tokens(s.generate(s.plan(cfg, PROMPT))))
        same_ranks = s.ranks is not None and [p.pid for p in s.ranks.procs] == pids
    return {"message": message, "next_request_ok": after == before, "same_ranks": same_ranks}


def rank_killed_idle(source) -> dict:
    """SIGKILL to rank 1 between two requests; then a request."""
    cfg = SpecConfig(layer_parallel=2, max_new_tokens=12)
    with Session(source, devices=2, timeout_s=20.0) as s:
        before = tokens(s.generate(s.plan(cfg, PROMPT)))
        proc = s.ranks.procs[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        message, after = _try(lambda: tokens(s.generate(s.plan(cfg, PROMPT))))
        restarted = s.ranks is not None and proc.pid not in [p.pid for p in s.ranks.procs]
    return {"message": message, "next_request_ok": after == before, "ranks_restarted": restarted,
            "left_running": proc.is_alive()}


def _try(call) -> tuple[str, object]:
    """(message, result): "(no error)" and the result, or the exception's message and None."""
    try:
        return "(no error)", call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}", None


def passed(row: dict, threads_left: list[str]) -> bool:
    """A row judged by `CRITERIA` from its measured fields only."""
    checks = [not threads_left]
    if "seconds_to_error" in row:
        checks += [row["seconds_to_error"] <= CRITERIA["rank_fault_error_within_s"], row["message"] != "(no error)"]
    if "left_running" in row:
        checks.append(not row["left_running"])
    if "next_request_ok" in row:
        checks.append(row["next_request_ok"])
    if "exit_code" in row:
        checks += [row["exit_code"] in (1, 2), row["message"].startswith("easyspec: error")]
    if "old_file_intact" in row:
        checks += [row["old_file_intact"], row["temporary_files_left"] == 0]
    return all(checks)


def run_cli(argv: list[str]) -> tuple[int, str, float]:
    err = io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli(argv)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("easyspec: error")]
    return code, (lines[-1] if lines else err.getvalue().strip()[-300:]), time.monotonic() - start


def truncated_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    f = dest / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return dest


def main(argv: list[str] | None = None) -> int:
    import platform

    import torch
    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/reliability_faults")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="easyspec-faults-"))
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
            "commit": git_commit(), "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                                                 f"python {platform.python_version()}",
            "command": shlex.join(["python", "benchmarks/faults.py", *(argv if argv is not None else sys.argv[1:])])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps({"meta": meta, "criteria": CRITERIA, "status": "running"},
                                                     indent=1))
    try:
        base, draft = make_pair(root / "pair", "qwen2", noise=0.01)
        source = resolve_pair(str(base), str(draft))
        pair = ["--base", str(base), "--draft", str(draft)]
        rows = []

        def row(fault: str, injected: str, **result) -> None:
            rows.append({"fault": fault, "injected": injected, **result})
            print(f"{fault}: {result.get('message', '')[:160]}", file=sys.stderr, flush=True)

        row("worker rank killed mid-run (G = 2)", "SIGKILL to rank 1 after the first round",
            **rank_fault(source, signal.SIGKILL, 20.0))
        row("worker rank stops answering (G = 2)", "SIGSTOP to rank 1 after the first round; timeout 8 s",
            **rank_fault(source, signal.SIGSTOP, 8.0))
        row("idle longer than the collective timeout (G = 2)",
            f"no request for {IDLE_S:g} s with a collective timeout of {IDLE_TIMEOUT_S:g} s",
            **idle_past_timeout(source))
        row("worker rank killed while idle (G = 2)", "SIGKILL to rank 1 between two requests",
            **rank_killed_idle(source))
        code, msg, s = run_cli(["generate", *pair, "--prompt", "x" * 200, "--memory-budget-mb", "0.1"])
        ok = run_cli(["generate", *pair, "--prompt", "x", "--memory-budget-mb", "0.1", "--max-new-tokens", "4"])[0]
        row("out of memory: the operator's budget", "--memory-budget-mb 0.1, a 200-token prompt", exit_code=code,
            message=msg, command_s=round(s, 2), next_request_ok=ok == 0)
        huge_b, huge_d = make_pair(root / "huge", "qwen2", noise=0.01, max_position_embeddings=2 ** 50)
        code, msg, s = run_cli(["generate", "--base", str(huge_b), "--draft", str(huge_d), "--prompt", "abc",
                                "--max-new-tokens", str(10 ** 13)])
        row("out of memory: a real allocation failure", "a run whose buffers need 80 TB", exit_code=code,
            message=msg, command_s=round(s, 2))
        broken = truncated_copy(base, root / "broken-base")
        code, msg, s = run_cli(["generate", "--base", str(broken), "--draft", str(draft), "--prompt", "a"])
        row("partial model file", "model.safetensors cut to half its size", exit_code=code, message=msg,
            command_s=round(s, 2))
        blocker = root / "a-file"
        blocker.write_text("x")
        os.environ["EASYSPEC_CACHE"] = str(blocker / "cache")
        try:
            code, msg, s = run_cli(["generate", "--pair", "qwen2.5-coder", "--prompt", "a"])
        finally:
            del os.environ["EASYSPEC_CACHE"]
        row("model cache folder not writable", "EASYSPEC_CACHE under a file", exit_code=code, message=msg,
            command_s=round(s, 2))
        code, msg, s = run_cli(["generate", *pair, "--prompt", "a", "--max-new-tokens", "2", "--save-run",
                                str(root / "missing" / "run.jsonl")])
        row("output folder missing", "--save-run into a folder that does not exist", exit_code=code, message=msg,
            command_s=round(s, 2))
        target = root / "result.json"
        write_text_atomic(target, "old")
        try:
            with atomic_writer(target) as f:
                f.write("half")
                raise OSError("interrupted")
        except OSError:
            pass
        leftovers = [q.name for q in root.iterdir() if q.name.startswith(".result.json")]
        row("write interrupted", "an error in the middle of writing a result file", message="(no message: internal)",
            old_file_intact=target.read_text() == "old", temporary_files_left=len(leftovers))
        threads = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
        rows = [{**r, "passed": passed(r, threads)} for r in rows]
        result = {"rows": rows, "criteria": CRITERIA, "meta": {**meta, "threads_left": threads}, "status": "done",
                  "passed": all(r["passed"] for r in rows)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_text_atomic(args.out + ".json", json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
