"""results/reliability.md and reliability.json, every figure read from the files the measuring
scripts write: benchmarks/load.py (the app under load, on the offline pair and on the small random
pair), benchmarks/faults.py (one row per fault it injected and measured) and the JUnit XML of
`pytest tests/test_bad_input.py`. Nothing here is measured and nothing is typed in by hand: the
criteria are the ones each JSON recorded before its run, and the verdicts are computed from them.

    python benchmarks/reliability.py --results results
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # noqa: E402  (benchmarks/load.py: its table and its criteria)

from easyspec.core.evaluation.bench import git_commit  # noqa: E402
from easyspec.core.files import write_text_atomic  # noqa: E402

LOAD_RUNS = {  # key: (results file stem, title)
    "load_offline_pair": ("reliability_load", "Offline pair"),
    "load_small_pair": ("reliability_load_small", "Small random pair (the CI configuration; tests/test_load.py)"),
}
FAULTS = "reliability_faults"
BAD_INPUT = "reliability_bad_input.xml"
MESSAGE_CHARS = 220


def bad_input(path: Path) -> dict:
    """Counts from the JUnit XML of tests/test_bad_input.py: cases per test function and outcome."""
    cases = ET.parse(path).getroot().iter("testcase")
    out: dict = {"cases": 0, "passed": 0, "failed": 0, "skipped": 0, "by_test": {}}
    for case in cases:
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else \
            "skipped" if case.find("skipped") is not None else "passed"
        test = case.get("name", "").split("[")[0]
        out["cases"] += 1
        out[outcome] += 1
        out["by_test"].setdefault(test, {"passed": 0, "failed": 0, "skipped": 0})[outcome] += 1
    return out


def short(message: str) -> str:
    """A message for the table: temporary folders cut, at most MESSAGE_CHARS characters."""
    text = re.sub(r"/tmp/[^ ]*?/(?=[^/ ]+(/|\b))", "…/", message).replace("|", "/")
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def next_request(row: dict) -> str:
    """What the row measured about what came after the fault, in words."""
    parts = []
    if "next_request_ok" in row:
        parts.append("next request served, same tokens as before" if row["next_request_ok"]
                     else "next request NOT the same as before")
    if "same_ranks" in row:
        parts.append("by the same ranks" if row["same_ranks"] else "by new ranks")
    if "ranks_restarted" in row:
        parts.append("ranks restarted" if row["ranks_restarted"] else "ranks NOT restarted")
    if "left_running" in row:
        parts.append("the faulty rank left running" if row["left_running"] else "nothing left running")
    if "exit_code" in row:
        parts.append(f"exit status {row['exit_code']}")
    if "old_file_intact" in row:
        parts.append(f"old file {'intact' if row['old_file_intact'] else 'DAMAGED'}, "
                     f"{row['temporary_files_left']} temporary files left")
    return "; ".join(parts)


def _seconds(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def load_section(key: str, r: dict) -> list[str]:
    stem, title = LOAD_RUNS[key]
    meta, m = r["meta"], r["memory"]
    same = "the same as" if {k: v for k, v in r["criteria"].items() if k != "deadline_s"} == load.CRITERIA \
        else "DIFFERENT from"
    return [f"### {title}", "", f"{meta['label'] or '(no label)'}; started {meta['started']}, commit {meta['commit']}, "
            f"`results/{stem}.{{json,md}}`:", "", f"`{meta['command']}`", "",
            f"Criteria recorded in the JSON before the run ({same} `benchmarks/load.py`'s `CRITERIA` now).", "",
            load.markdown(r).rstrip(), "",
            f"Wall time {r['wall_s']} s for {r['requests']} requests from {r['clients']} clients. Memory (app process "
            f"and its ranks, {m['samples']} samples): {m['baseline_mb']} MB after the warm-up request, peak "
            f"{' / '.join(str(q) for q in m['peak_by_quarter_mb'])} MB up to the end of each quarter of the run, "
            f"{m['end_mb']} MB at the end; growth of the peak over the second half {m['second_half_growth_mb']} MB "
            f"(allowed {m['allowance_mb']} MB). Result: {'PASSED' if r['passed'] else 'FAILED'}.", ""]


def faults_section(f: dict) -> list[str]:
    meta = f["meta"]
    lines = ["## Faults (`benchmarks/faults.py`, small random pair)", "",
             f"Started {meta['started']}, commit {meta['commit']}, `results/{FAULTS}.json`, `{meta['command']}`. "
             "Each row is one fault the script injected and measured; the same faults are asserted through the "
             "app and the command line in `tests/test_faults.py`. Criteria recorded before the run: "
             + "; ".join(f"{k}: {v}" for k, v in f["criteria"].items()) + ".", "",
             "| fault | injected by | seconds to the error | command s | message (shortened) | after the fault | "
             "passed |", "|---|---|---|---|---|---|---|"]
    for row in f["rows"]:
        lines.append(f"| {row['fault']} | {row['injected']} | {_seconds(row.get('seconds_to_error'))} | "
                     f"{_seconds(row.get('command_s'))} | {short(row.get('message', ''))} | {next_request(row)} | "
                     f"{'yes' if row['passed'] else 'NO'} |")
    left = meta.get("threads_left") or []
    lines += ["", f"Threads left after the faults: {len(left)}{(' (' + ', '.join(left) + ')') if left else ''}. "
              f"Result: {'PASSED' if f['passed'] else 'FAILED'}.", ""]
    return lines


def bad_input_section(b: dict | None) -> list[str]:
    lines = ["## Bad input (`tests/test_bad_input.py`)", ""]
    if b is None:
        return lines + [f"Not run for this file (no `results/{BAD_INPUT}`).", ""]
    per = ", ".join(f"{t}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
                    for t, c in b["by_test"].items())
    return lines + [f"From `results/{BAD_INPUT}` (`pytest tests/test_bad_input.py --junitxml ...`): {b['cases']} "
                    f"test cases, {b['passed']} passed, {b['failed']} failed, {b['skipped']} skipped ({per}). Each "
                    "case of the catalogue names one bad input (command-line flag, dashboard field through "
                    "`gradio_client`, uploaded pilot file or saved run) and asserts its own message: no traceback, "
                    "no Gradio \"Error\" without a reason.", ""]


LOAD_INTRO = ("Concurrent `gradio_client` sessions share a deterministic mix of requests against one running "
              "`easyspec app`: generate (every mode, several N, k and calibration policies, short and long prompts, "
              "some sampled), Compare, Pilot, replay of a saved run, generate cancelled by the client a few rounds "
              "in, and invalid requests. The app runs one device job at a time, so latency is mostly queueing. "
              "After the load each distinct greedy generate request that completed runs again alone and must give "
              "the same tokens. Memory: RSS of the app process plus its worker ranks, sampled every 0.5 s.")
STATIC = """## No half-written files

Every file written by `core/`, `app/` and `benchmarks/` goes through `core/files.py` (temporary name
in the same folder, fsync, `os.replace`; the temporary file is removed on failure);
`tests/test_faults.py` checks that no other writer exists. The offline pair is converted into a
hidden folder renamed into place (`core/models/offline_pair.py`).

## Security (`tests/test_security.py`)

`easyspec app` listens on 127.0.0.1; another `--host` or `--share true` is refused without
`--allow-remote`; `--auth USER:PASSWORD` / `--auth-file FILE` turn on Gradio's login (API calls
without it are refused). No endpoint parameter names a model or a path; the two file parameters are
uploads, and a request naming a server file is refused by Gradio ("not uploaded by a user") and
never read; uploads are parsed as text only.
"""


def build(folder: Path) -> tuple[str, dict]:
    """(Markdown, summary JSON) from the results files in `folder`; a missing load run is said so."""
    loads = {k: json.loads((folder / f"{stem}.json").read_text()) for k, (stem, _) in LOAD_RUNS.items()
             if (folder / f"{stem}.json").exists()}
    faults = json.loads((folder / f"{FAULTS}.json").read_text())
    bad = bad_input(folder / BAD_INPUT) if (folder / BAD_INPUT).exists() else None
    for key, r in loads.items():  # a file whose summary does not follow from its raw data is refused
        again = load.rebuild(r)
        if again != {k: r.get(k) for k in again}:
            raise ValueError(f"{LOAD_RUNS[key][0]}.json: its summary does not match its raw data")
    commits = sorted({r["meta"]["commit"] for r in [*loads.values(), faults]})
    lines = ["# Reliability: load, faults, bad input", "",
             "Every figure below is read from the JSON files next to this one by `benchmarks/reliability.py`; "
             "dates, commits and exact commands are in those files. Latencies on a shared machine are noisy and "
             "only comparable within one run. "
             + (f"All measured at commit {commits[0]}." if len(commits) == 1 else
                f"Measured at DIFFERENT commits: {', '.join(commits)}."), "", "## Load (`benchmarks/load.py`)", "",
             LOAD_INTRO, ""]
    for key in LOAD_RUNS:
        lines += load_section(key, loads[key]) if key in loads else \
            [f"### {LOAD_RUNS[key][1]}", "", f"Not run (no `results/{LOAD_RUNS[key][0]}.json`).", ""]
    lines += faults_section(faults) + bad_input_section(bad) + [STATIC]
    summary = {"commits": commits, "summary_of": [f"{LOAD_RUNS[k][0]}.json" for k in loads] + [f"{FAULTS}.json"]
               + ([BAD_INPUT] if bad else []),
               **{k: {x: v for x, v in r.items() if x != "raw"} for k, r in loads.items()},
               "faults": faults, "bad_input": bad,
               "passed": all(r["passed"] for r in loads.values()) and faults["passed"]
               and (bad is None or bad["failed"] == 0)}
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="folder with the load, fault and bad-input files")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json (default RESULTS/reliability)")
    args = p.parse_args(argv)
    folder = Path(args.results)
    out = args.out or str(folder / "reliability")
    md, summary = build(folder)
    summary["meta"] = {"command": shlex.join(["python", "benchmarks/reliability.py",
                                              *(argv if argv is not None else sys.argv[1:])]),
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "commit": git_commit()}
    write_text_atomic(out + ".json", json.dumps(summary, indent=1))
    write_text_atomic(out + ".md", md)
    print(md)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
