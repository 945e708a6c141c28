"""Rerun every measured results file at one commit, in one command.

    python benchmarks/rerun_results.py            # all of results/ (about 1.5 h on a 2-core CPU)
    python benchmarks/rerun_results.py --quick    # the same steps, tiny arguments, into a temp folder

Each step is one command listed in `steps` with the arguments of the file it rewrites; the load
steps start `easyspec app` (offline pair, and the small random pair of tests/helpers.py) and stop it
afterwards. OUT/rerun.json records each step's command, exit status, seconds and commit; steps
recorded earlier at a commit with the same code (`same_code`: only results, the demo runs, docs or
tests no step runs changed since) stay in it, so a rerun may be split with --only over several
sittings; `missing` lists the steps not yet run at this code, `failed` those that ended without
writing their file. The run refuses a checkout with uncommitted changes (the files would name a
commit that is not what ran) unless --allow-dirty, and fails if HEAD moves while it runs. Steps that load
the real pair or start the app take the shared machine's heavy lock (--lock), one step at a time.
A step that fails is recorded and the rest still run (a producer also exits 1 when its run misses a criterion it
states); the exit status is 1 if any step did not exit 0.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from easyspec.app.logs import configure as configure_logging  # noqa: E402
from easyspec.core.files import write_text_atomic  # noqa: E402

PY = sys.executable
EASYSPEC = (PY, "-m", "easyspec.app.cli")
LOAD_OFFLINE = ("--clients 16 --requests 200 --short-tokens 4 --long-tokens 12 --long-repeat 6 --distinct 16 "
                "--deadline-s 1200")
LOAD_SMALL = "--clients 16 --requests 200 --short-tokens 4 --long-tokens 8 --distinct 10"
TUNE_QUICK = ("--sets", "code", "--tune-prompts", "2", "--eval-prompts", "1", "--tune-tokens", "4", "--eval-tokens",
              "4", "--search", "2", "--probe-rounds", "8")
DEMO_PROMPT = "Write a Python function that checks whether a number is prime."
# The recorded runs the How-it-works screen replays (assets/, shipped in the package): name -> settings.
DEMO_RUNS = {"demo_run_speculative": ("--mode", "speculative"),
             "demo_run_easyspec": ("--mode", "easyspec", "--layer-parallel", "4", "--calibration", "every-round"),
             "demo_run_easyspec_none": ("--mode", "easyspec", "--layer-parallel", "4", "--calibration", "none")}


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # {out} is the output folder, {assets} the demo runs' folder; {url} {pid} the app's
    minutes: float  # expected on a 2-core CPU, from the files' previous runs
    heavy: bool = True  # loads the real pair or starts the app: under the heavy lock
    app: str = ""  # "" | "offline" | "small": the app this step runs against


def steps(quick: bool) -> list[Step]:
    """Every results producer with the arguments of the file it writes (tiny ones with --quick)."""
    q = quick
    spd = "--limit 1 --repeats 1 --max-new-tokens 4" if q else "--limit 3 --repeats 2 --max-new-tokens 48"
    tree = "--limit 1 --max-new-tokens 4" if q else "--limit 2 --max-new-tokens 40"
    acc = "--limit 1 --max-new-tokens 4" if q else "--limit 2 --max-new-tokens 32"
    prec = "--limit 1 --repeats 1 --max-new-tokens 4" if q else "--limit 4 --repeats 1 --max-new-tokens 48"
    load_off = "--clients 2 --requests 4 --short-tokens 2 --long-tokens 2 --distinct 2 --deadline-s 600" if q \
        else LOAD_OFFLINE
    load_small = "--clients 3 --requests 10 --short-tokens 4 --long-tokens 4 --distinct 3" if q else LOAD_SMALL
    bad_input = ("-k", "catalogue or command_line") if q else ()
    label_off = "offline pair qwen2.5-coder 1.5B/0.5B, fp32, cpu, G=1"
    label_small = "small random qwen2 pair (tests/helpers.py make_pair, 8 layers, hidden 64), fp32, cpu, G=1"
    return [
        Step("engine_baseline", (PY, "benchmarks/engine_baseline.py",
                                 *(("--dtypes", "float32", "--max-new-tokens", "4", "--limit", "1") if q else
                                   ("--max-new-tokens", "48")), "--out", "{out}/engine_baseline"), 21),
        Step("bench_speed", (*EASYSPEC, "bench", "speed", "--prompts", "code", *spd.split(), "--layer-parallel", "2,4",
                             "--calibration", "every-round", "--out", "{out}/bench_speed"), 8),
        Step("bench_tree", (*EASYSPEC, "bench", "speed", "--prompts", "code", *tree.split(), "--layer-parallel", "4",
                            "--calibration", "every-round", "--draft-len", "5", "--tree-depth", "5", "--tree-width",
                            "2", "--adaptive", "--repeats", "1", "--no-transformers", "--out", "{out}/bench_tree"), 13),
        # Issue 21: the draft at each precision beside the fp32 base, 8 prompts of two sets (4 each). Measured on
        # 2026-12-02 (2-core CPU): about 6 min to the end of the first prompt (loads, warm-up), 4.5 min per prompt after.
        Step("bench_draft_precision", (*EASYSPEC, "bench", "speed", "--prompts", "code,chat",
                                       *(prec.split()), "--layer-parallel", "4", "--calibration", "every-round",
                                       "--draft-dtypes", "float32,bfloat16,int8,int4",
                                       "--out", "{out}/bench_draft_precision"), 40),
        Step("draft_kernels", (PY, "benchmarks/draft_kernels.py", *(("--repeats", "1", "--precisions",
                                                                    "float32,int8") if q else ()),
                               "--out", "{out}/draft_kernels"), 3),
        Step("long_prefill", (PY, "benchmarks/long_prefill.py", *(("--tokens", "256", "--repeats", "1") if q else
                                                                  ("--tokens", "4096,8192", "--repeats", "3")),
                              "--out", "{out}/long_prefill"), 12),
        *(Step(f"bench_acceptance_{p}", (*EASYSPEC, "bench", "acceptance", "--prompts", p, *acc.split(), "--out",
                                         f"{{out}}/bench_acceptance_{p}"), m) for p, m in (("code", 8), ("chat", 10))),
        Step("devices_cpu", (PY, "benchmarks/devices_cpu.py", *(("--max-new-tokens", "4", "--repeats", "1") if q else
                                                                ("--repeats", "3")), "--out", "{out}/devices_cpu"), 4),
        # Issue 22: the hardware model against published batch-1 figures and this CPU (bandwidth measured in the step).
        Step("projection_check", (PY, "benchmarks/projection_check.py", *(("--repeats", "3") if q else ()),
                                  "--out", "{out}/projection_check"), 1),
        Step("reliability_faults", (PY, "benchmarks/faults.py", "--out", "{out}/reliability_faults"), 1.5,
             heavy=False),
        Step("reliability_load", (PY, "benchmarks/load.py", "--url", "{url}", "--app-pid", "{pid}", *load_off.split(),
                                  "--label", label_off, "--out", "{out}/reliability_load"), 17, app="offline"),
        Step("reliability_load_small", (PY, "benchmarks/load.py", "--url", "{url}", "--app-pid", "{pid}",
                                        *load_small.split(), "--label", label_small,
                                        "--out", "{out}/reliability_load_small"), 2.5, app="small"),
        Step("reliability_bad_input", (PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bad_input.py",
                                       *bad_input, "--junitxml={out}/reliability_bad_input.xml"), 1.5),
        Step("reliability", (PY, "benchmarks/reliability.py", "--results", "{out}"), 0.1, heavy=False),
        # The tuner on the real pair: the default run also refreshes the pair's cached tuning (--groups auto).
        *(Step(name, (PY, "benchmarks/tuning.py", *(TUNE_QUICK if q else args.split()), "--out", f"{{out}}/{name}"), m)
          for name, args, m in (("tuning", "", 35),
                                ("tuning_code", "--sets code --tune-prompts 16 --eval-prompts 16 --search 120 "
                                                "--tolerance 0.03", 30),
                                ("tuning_code_k3", "--sets code --tune-prompts 16 --eval-prompts 16 --search 120 "
                                                   "--tolerance 0.03 --draft-len 3", 30))),
        *(Step(name, (*EASYSPEC, "generate", "--pair", "qwen2.5-coder", "--chat", "--prompt", DEMO_PROMPT, *settings,
                      "--max-new-tokens", "4" if q else "48", "--json", "--save-run", f"{{assets}}/{name}.jsonl"), 1)
          for name, settings in DEMO_RUNS.items()),
    ]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


# What no step runs: the steps' outputs, the docs, the tests (but the bad-input step runs
# tests/test_bad_input.py) and this script (each file records its command, and a test checks it
# against the step's). Two commits that differ only in these hold the same code for the results.
NOT_RUN = (":(exclude)results", ":(glob,exclude)assets/demo_run_*.jsonl", ":(exclude)docs", ":(glob,exclude)**/*.md",
           ":(glob,exclude)tests/test_*.py", ":(exclude)benchmarks/rerun_results.py")
RUN_TESTS = ("tests/test_bad_input.py",)


def same_code(a: str, b: str) -> bool:
    """Do commits a and b hold the same code that computes the results?"""
    if a == b:
        return True
    diff = ["git", "diff", "--quiet", a, b, "--"]
    return (subprocess.run([*diff, ".", *NOT_RUN], cwd=ROOT).returncode == 0
            and subprocess.run([*diff, *RUN_TESTS], cwd=ROOT).returncode == 0)


def kept_steps(previous: dict, commit: str, rerun: set[str]) -> tuple[list[dict], list[str]]:
    """The steps of an earlier record that still describe this code (same code as `commit`, not
    rerun now), and the names of those that do not."""
    kept, stale = [], []
    for step in previous.get("steps", []):
        if step["step"] in rerun:
            continue
        if same_code(step.get("commit", previous.get("commit", "")), commit):
            kept.append({"commit": previous.get("commit"), **step})
        else:
            stale.append(step["step"])
    return kept, stale


def verdict_written(out: Path, name: str) -> bool:
    """Did the step write its file with a verdict (passed: false) before exiting 1?"""
    try:
        data = json.loads((ROOT / out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return False
    return data.get("status", "done") == "done" and \
        data.get("passed", data.get("verdict", {}).get("passed")) is False


def dirty() -> bool:
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    return bool(status.strip())


@contextlib.contextmanager
def heavy_lock(path: str | None, needed: bool) -> Iterator[None]:
    """The shared machine's lock for anything that loads the real pair or starts the app."""
    if not (path and needed):
        yield
        return
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def app(kind: str, work: Path) -> Iterator[tuple[str, int]]:
    """(url, pid) of `easyspec app` on the offline pair or on a fresh small random pair."""
    from app_server import app_process

    if kind == "small":
        from helpers import make_pair

        base, draft = make_pair(work / "small-pair", "qwen2", noise=0.01)
    else:
        from easyspec.core.models.loading import resolve_pair

        source = resolve_pair(pair="qwen2.5-coder")
        base, draft = source.base_dir, source.draft_dir
    with app_process(base, draft, work / f"app-{kind}.log") as (url, proc):
        yield url, proc.pid


def assets_folder(out: Path) -> Path:
    """assets/ when the run rewrites results/; beside a temporary or other output folder otherwise."""
    return Path("assets") if Path(out) == Path("results") else Path(out) / "assets"


def run_step(step: Step, out: Path, work: Path, lock: str | None) -> dict:
    start = time.monotonic()
    with heavy_lock(lock, step.heavy):
        with (app(step.app, work) if step.app else contextlib.nullcontext(("", 0))) as (url, pid):
            argv = [a.format(out=out, assets=assets_folder(out), url=url, pid=pid) for a in step.argv]
            print(f"rerun: {step.name}: {shlex.join(argv)}", file=sys.stderr, flush=True)
            rc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
    return {"step": step.name, "command": shlex.join(argv), "exit_status": rc,
            "seconds": round(time.monotonic() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    configure_logging()  # core's progress (the offline pair's first preparation) on stderr
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny arguments, into a temporary folder (a smoke run)")
    p.add_argument("--out", help="output folder (default results/, or a temporary folder with --quick)")
    p.add_argument("--only", help="comma-separated step names (default all)")
    p.add_argument("--lock", default="/tmp/easyspec-heavy.lock", help="lock file for real-pair steps ('' for none)")
    p.add_argument("--allow-dirty", action="store_true", help="run even with uncommitted changes")
    p.add_argument("--dry-run", action="store_true", help="print the steps' commands and the expected time only")
    args = p.parse_args(argv)
    if dirty() and not args.allow_dirty and not args.dry_run:
        p.error("the checkout has uncommitted changes: commit them first (or --allow-dirty for a trial run)")
    todo = steps(args.quick)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {s.name for s in todo})
        if unknown:
            p.error(f"unknown step {unknown[0]!r}: choose from {', '.join(s.name for s in todo)}")
        todo = [s for s in todo if s.name in names]
    # The commands run from the repository root: results/ stays relative, as in the files' command lines.
    if args.out or not args.quick:
        out = Path(args.out or "results")
    else:
        out = Path("TEMP" if args.dry_run else tempfile.mkdtemp(prefix="easyspec-rerun-"))
    commit = head_commit()
    # --quick: tiny runs, so model loads and app starts dominate: 1 to 8 min per step on the shared
    # 2-core machine (25 min for the six steps without an app on 2026-12-01), 4 on average.
    minutes = sum(6 if s.app else 4 for s in todo) if args.quick else sum(s.minutes for s in todo)
    expected = f"about {minutes:.0f} min"
    print(f"rerun: {len(todo)} steps at commit {commit[:12]} into {out}; expected {expected} on a 2-core CPU",
          file=sys.stderr, flush=True)
    if args.dry_run:
        for step in todo:
            command = shlex.join(a.format(out=out, assets=assets_folder(out), url="URL", pid="PID") for a in step.argv)
            print(f"{step.name} (~{step.minutes:g} min{', ' + step.app + ' app' if step.app else ''}): {command}")
        return 0
    (ROOT / out).mkdir(parents=True, exist_ok=True)
    (ROOT / assets_folder(out)).mkdir(parents=True, exist_ok=True)
    path = ROOT / out / "rerun.json"
    previous = json.loads(path.read_text()) if path.exists() and not args.quick else {}
    # Steps run earlier at a commit with the same code stay in the record: a rerun may be split
    # over several sittings as long as only results were committed in between.
    kept, stale = kept_steps(previous, commit, {s.name for s in todo})
    if stale:
        print(f"rerun: dropped from the record (their code has changed since): {', '.join(stale)}", file=sys.stderr)
    record = {"commit": commit, "quick": args.quick, "dirty": dirty(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "steps": kept,
              "failed": []}
    with tempfile.TemporaryDirectory(prefix="easyspec-rerun-work-") as work:
        for step in todo:
            done = {"commit": commit, **run_step(step, out, Path(work), args.lock or None)}
            # a step that exits 1 only because its criterion failed has written its file; any other failure has not
            record["steps" if done["exit_status"] == 0 or verdict_written(out, step.name) else "failed"].append(done)
            if head_commit() != commit:
                record["error"] = "HEAD moved during the run: the files do not come from one commit"
                break
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    order = [s.name for s in steps(args.quick)]
    record["steps"].sort(key=lambda s: order.index(s["step"]) if s["step"] in order else len(order))
    record["missing"] = [name for name in order if name not in {s["step"] for s in record["steps"]}]
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    failed = [s["step"] for s in record["steps"] + record["failed"] if s["exit_status"] != 0]
    print(f"rerun: done into {ROOT / out}; failed: {', '.join(failed) or 'none'}; not yet rerun at this code: "
          f"{', '.join(record['missing']) or 'none'}" + (f"; {record['error']}" if "error" in record else ""),
          file=sys.stderr)
    return 1 if failed or "error" in record else 0


if __name__ == "__main__":
    sys.exit(main())
