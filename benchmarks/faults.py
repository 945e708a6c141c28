"""Fault figures for results/reliability.md: each fault injected on a small random pair, with the
message it ends in, the seconds from the fault to that message, and whether the next request works.

The same faults are asserted by tests/test_faults.py (app and command line); this script records
what happened, for the results file. Multi-device faults use a Session with G = 2 CPU ranks.

    python benchmarks/faults.py --out results/reliability_faults
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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
from easyspec.core.bench import git_commit, machine  # noqa: E402
from easyspec.core.engine import SpecConfig  # noqa: E402
from easyspec.core.files import atomic_writer, write_text_atomic  # noqa: E402
from easyspec.core.loading import resolve_pair  # noqa: E402
from easyspec.core.session import Session  # noqa: E402

PROMPT = list(range(10, 30))


def tokens(stream) -> list[int]:
    return [t for r in stream for t in r.token_ids]


def rank_fault(source, sig: int, timeout_s: float) -> dict:
    """Send `sig` to rank 1 after the first round of a long run; time until the error."""
    with Session(source, devices=2, timeout_s=timeout_s) as s:
        cfg = SpecConfig(layer_parallel=2, max_new_tokens=400)
        before = tokens(s.generate(PROMPT, SpecConfig(layer_parallel=2, max_new_tokens=12)))
        proc = s.ranks.procs[0]
        stream = s.generate(PROMPT, cfg)
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
        after = tokens(s.generate(PROMPT, SpecConfig(layer_parallel=2, max_new_tokens=12)))
    return {"seconds_to_error": round(seconds, 2), "message": message, "next_request_ok": after == before,
            "left_running": left}


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/reliability_faults")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="easyspec-faults-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
        result = {"rows": rows, "meta": {"started": started, "machine": machine(), "commit": git_commit(),
                                         "command": "python benchmarks/faults.py", "threads_left": threads}}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
