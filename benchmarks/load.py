"""Load test of a running `easyspec app`, through `gradio_client`, as many users at once.

What it does: C concurrent clients (threads, one gradio_client session each) share R requests of
mixed size: short and long prompts, every mode (vanilla, speculative, easyspec with several N,
k and calibration policies), greedy and sampled, Compare and Pilot runs, replays of a saved run,
some cancelled midway and some invalid on purpose. Meanwhile it samples the resident memory of
the app process and its worker ranks. Afterwards every distinct greedy request that completed is
run again alone, and its tokens must equal those it produced under load.

Checks (exit status 1 if any fails): every request ended (a full result, a clear error, or a
confirmed cancel) within its deadline, none was lost; invalid requests got their specific
message; no unexpected error; greedy results equal the same request run alone; Compare columns
agree; memory stops growing: its peak over the second half of the run exceeds its peak over the
first half by no more than the allowance. Before the baseline, each client session sends one
request of each kind (the largest generate): Gradio keeps every session's latest value of each
output component (the app's --max-sessions bounds how many sessions it keeps), so a new session's
memory grows until it has produced each output once; a leak keeps growing after it. The criteria are fixed in `CRITERIA` (the deadline is the
--deadline-s of the run) and written to OUT.json before the first request; the JSON then keeps the
raw data (every request with its outcome, latency and tokens, the tokens of each request run alone,
every memory sample) and the summary and table are computed from it (`summarise`, `rebuild`).

    python benchmarks/load.py --url http://127.0.0.1:7860/ --out results/reliability_load
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import psutil
from gradio_client import Client
from gradio_client.exceptions import AppError

from easyspec.core.evaluation.bench import git_commit, machine
from easyspec.core.files import write_text_atomic

# Fixed before any run; OUT.json holds them (with the run's deadline) before the first request.
CRITERIA = {
    "memory_second_half_growth_mb": 200.0,  # RSS peak over the 2nd half minus the peak over the 1st half
    "lost": 0, "hung": 0, "unexpected_errors": 0,  # a hung request is one with no result by the deadline
    "greedy_differ_from_alone": 0, "compare_columns_differ": 0,
}

SHORT_PROMPTS = ["def add(a, b):", "The quick brown fox", "Write a haiku about rain.", "List three primes.",
                 "SELECT name FROM users WHERE", "Explain recursion in one sentence."]
LONG_PARAGRAPH = ("Here is a Python module that parses a configuration file, validates every field, and reports "
                  "errors with line numbers. Rewrite it so that it streams the file line by line. ")
EASYSPEC_SETTINGS = [(2, "every-round", 3), (4, "every-round", 5), (3, "on-mismatch", 4), (4, "none", 5),
                     (1, "every-round", 5)]
# (fields, a piece of the message the app must answer with)
INVALID = [(dict(prompt="   "), "the prompt is empty"),
           (dict(prompt="abc", layer_parallel=99), "layer-parallel size N must be between"),
           (dict(prompt="abc", mode="turbo"), "mode must be one of"),
           (dict(prompt="abc", max_new_tokens="lots"), "max new tokens must be a number"),
           (dict(prompt="abc", top_p=0.0), "top-p must be between")]


@dataclass(frozen=True)
class Request:
    index: int
    kind: str  # generate | compare | pilot | replay | cancel | invalid
    fields: dict
    greedy: bool = True
    expect: str | None = None  # invalid: a piece of the expected message

    @property
    def key(self) -> str:
        return json.dumps({"kind": self.kind, **self.fields}, sort_keys=True)


@dataclass
class Outcome:
    index: int
    kind: str
    status: str  # ok | cancelled | rejected (an invalid request, answered as expected) | error | hung
    latency_s: float
    message: str = ""
    token_ids: list[int] = field(default_factory=list)
    identical: bool | None = None  # compare: all columns produced the same tokens


def generate_pool(size: int, short_tokens: int, long_tokens: int, max_n: int, long_prompt: str,
                  rng: random.Random) -> list[tuple[dict, bool]]:
    """`size` distinct generate requests (fields, greedy): every mode, short and long prompts, some
    sampled. Requests under load repeat them, so that each can be checked against a run alone."""
    pool: dict[str, tuple[dict, bool]] = {}
    modes = ["vanilla", "speculative", "easyspec", "easyspec"]
    for i in range(size * 20):
        long = rng.random() < 0.25
        mode = modes[i % len(modes)] if i < len(modes) else rng.choice(modes)
        layer_parallel, calibration, k = rng.choice(EASYSPEC_SETTINGS)
        fields = dict(prompt=long_prompt if long else rng.choice(SHORT_PROMPTS), mode=mode,
                      layer_parallel=min(layer_parallel, max_n), calibration=calibration, draft_len=k,
                      max_new_tokens=long_tokens if long else short_tokens)
        sampled = rng.random() < 0.15
        if sampled:
            fields.update(temperature=0.8, seed=rng.randrange(3))
        pool.setdefault(json.dumps(fields, sort_keys=True), (fields, not sampled))
        if len(pool) == size:
            break
    return list(pool.values())


def plan_requests(n: int, short_tokens: int, long_tokens: int, max_n: int, seed: int, long_repeat: int = 2,
                  distinct: int = 16) -> list[Request]:
    """A deterministic mix: mostly generate (all modes, short and long), some compare, pilot, replay,
    cancel and invalid requests."""
    rng = random.Random(seed)
    long_prompt = LONG_PARAGRAPH * long_repeat
    pool = generate_pool(distinct, short_tokens, long_tokens, max_n, long_prompt, rng)
    kinds = (["generate"] * 12 + ["compare"] * 2 + ["pilot"] + ["replay"] * 2 + ["cancel"] * 2 + ["invalid"] * 2)
    out = []
    for i in range(n):
        kind = kinds[rng.randrange(len(kinds))]
        prompt = rng.choice(SHORT_PROMPTS)
        if kind == "generate":
            fields, greedy = pool[rng.randrange(len(pool))]
            out.append(Request(i, kind, fields, greedy=greedy))
        elif kind == "compare":
            out.append(Request(i, kind, dict(prompt=prompt, columns=2, max_new_tokens=short_tokens,
                                             mode_1="vanilla", mode_2="easyspec",
                                             layer_parallel_2=min(2, max_n))))
        elif kind == "pilot":
            out.append(Request(i, kind, dict(prompt=rng.choice(SHORT_PROMPTS), source="typed prompts",
                                             n_prompts=1, layer_parallel=[min(2, max_n)], calibration=["none"],
                                             draft_len=[3], speculative=False,
                                             max_new_tokens=max(4, short_tokens - short_tokens % 4))))
        elif kind == "replay":
            out.append(Request(i, kind, dict(speed="instant"), greedy=False))
        elif kind == "cancel":
            out.append(Request(i, kind, dict(prompt=long_prompt, mode="easyspec", max_new_tokens=long_tokens * 3,
                                             layer_parallel=min(2, max_n)), greedy=False))
        else:
            fields, expect = INVALID[rng.randrange(len(INVALID))]
            out.append(Request(i, kind, fields, greedy=False, expect=expect))
    return out


class MemorySampler:
    """Resident memory of a process and its children (worker ranks), sampled on a thread."""

    def __init__(self, pid: int | None, every_s: float = 0.5):
        self.proc = psutil.Process(pid) if pid else None
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self.every_s = every_s

    def rss(self) -> int | None:
        if self.proc is None:
            return None
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running())
        except psutil.Error:
            return None

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every_s):
            value = self.rss()
            if value is not None:
                self.samples.append((time.monotonic() - t0, value))

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def pid_listening_on(url: str) -> int | None:
    """The process that listens on the URL's port on this machine (None if not found or not allowed)."""
    port = urlparse(url).port
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except psutil.Error:
        return None
    return None


class Driver:
    def __init__(self, url: str, auth: tuple[str, str] | None, deadline_s: float):
        self.url, self.auth, self.deadline_s = url, auth, deadline_s
        self._local = threading.local()
        self.run_file: str | None = None

    def client(self) -> Client:
        if not hasattr(self._local, "client"):
            # 60 s for each HTTP call (httpx's default 5 s fails on a busy 2-core machine)
            self._local.client = Client(self.url, auth=self.auth, verbose=False, httpx_kwargs={"timeout": 60.0})
        return self._local.client

    def call(self, req: Request) -> Outcome:
        start = time.monotonic()
        try:
            out = self._call(req)
        except AppError as exc:
            message = str(exc)
            ok = req.kind == "invalid" and req.expect in message
            out = Outcome(req.index, req.kind, "rejected" if ok else "error", 0.0, message[:300])
        except TimeoutError:
            out = Outcome(req.index, req.kind, "hung", 0.0, f"no result within {self.deadline_s:.0f} s")
        except Exception as exc:  # a client-side failure is recorded, never lost
            out = Outcome(req.index, req.kind, "error", 0.0, f"{type(exc).__name__}: {exc}"[:300])
        out.latency_s = time.monotonic() - start
        return out

    def _call(self, req: Request) -> Outcome:
        c = self.client()
        if req.kind in ("generate", "invalid"):
            result = c.submit(**req.fields, api_name="/generate").result(timeout=self.deadline_s)
            if req.kind == "invalid":
                return Outcome(req.index, req.kind, "error", 0.0, "an invalid request was accepted")
            details = result[6]
            if details["stopped_early"] or not details["token_ids"]:
                return Outcome(req.index, req.kind, "error", 0.0, f"incomplete result: {details['stop']}")
            return Outcome(req.index, req.kind, "ok", 0.0, token_ids=details["token_ids"])
        if req.kind == "compare":
            details = c.submit(**req.fields, api_name="/compare").result(timeout=self.deadline_s)[3]
            return Outcome(req.index, req.kind, "ok", 0.0, identical=details["identical"],
                           token_ids=details["columns"][0]["token_ids"])
        if req.kind == "pilot":
            status = c.submit(**req.fields, api_name="/pilot").result(timeout=self.deadline_s)[0]
            ok = status.startswith("**Done**")
            return Outcome(req.index, req.kind, "ok" if ok else "error", 0.0, "" if ok else status[:300])
        if req.kind == "replay":
            from gradio_client import handle_file

            details = c.submit(run_file=handle_file(self.run_file), **req.fields,
                               api_name="/replay").result(timeout=self.deadline_s)[6]
            return Outcome(req.index, req.kind, "ok", 0.0, token_ids=details["token_ids"])
        if req.kind == "cancel":
            job = c.submit(**req.fields, api_name="/generate")
            end = time.monotonic() + self.deadline_s
            while job.status().code.name not in ("ITERATING", "FINISHED") and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.3)  # a few rounds in
            job.cancel()
            while not job.done() and time.monotonic() < end:
                time.sleep(0.05)
            if not job.done():
                raise TimeoutError
            return Outcome(req.index, req.kind, "cancelled", 0.0)
        raise ValueError(f"unknown request kind {req.kind}")


def warmup_requests(plan: list[Request]) -> list[Request]:
    """One request of each kind that produces outputs (generate, compare, pilot, replay), the largest
    generate (longest prompt, most tokens): what each client session sends before the baseline."""
    out = []
    for kind in ("generate", "compare", "pilot", "replay"):
        of_kind = [r for r in plan if r.kind == kind]
        if of_kind:
            out.append(max(of_kind, key=lambda r: (len(r.fields.get("prompt", "")), r.fields.get("max_new_tokens", 0)))
                       if kind == "generate" else of_kind[0])
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def run_load(url: str, clients: int = 16, requests: int = 200, short_tokens: int = 8, long_tokens: int = 24,
             seed: int = 0, auth: tuple[str, str] | None = None, deadline_s: float = 600.0, app_pid: int | None = None,
             long_repeat: int = 2, distinct: int = 16, progress=None) -> dict:
    """The raw data of one load run: every request with its outcome, the tokens of each distinct
    greedy request run alone afterwards, and the memory samples."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    driver = Driver(url, auth, deadline_s)
    api = driver.client().view_api(print_info=False, return_format="dict")["named_endpoints"]
    n_param = next(p for p in api["/generate"]["parameters"] if p["parameter_name"] == "layer_parallel")
    max_n = int(n_param["type"].get("maximum", 4)) if isinstance(n_param.get("type"), dict) else 4
    # A run whose saved file the replay requests upload.
    saved = driver.client().predict(prompt=SHORT_PROMPTS[0], max_new_tokens=short_tokens, api_name="/generate")
    driver.run_file = saved[7]
    app_pid = app_pid or pid_listening_on(url)
    plan = plan_requests(requests, short_tokens, long_tokens, max_n, seed, long_repeat, distinct)
    warm = warmup_requests(plan)
    warm_outcomes: list[Outcome] = []
    outcomes: dict[int, Outcome] = {}
    lock = threading.Lock()
    todo = list(reversed(plan))
    warmed, go = threading.Barrier(clients + 1), threading.Event()

    def worker() -> None:
        # Warm-up, in this client's own session, before the baseline: Gradio keeps each session's
        # latest value of every output component, so a session's memory grows until it has produced
        # each output once (the largest request of each kind). Growth after that is the app's own.
        for req in warm:
            out = driver.call(req)
            with lock:
                warm_outcomes.append(out)
        warmed.wait()
        go.wait()
        while True:
            with lock:
                if not todo:
                    return
                req = todo.pop()
            out = driver.call(req)
            with lock:
                outcomes[req.index] = out
                if len(outcomes) % 20 == 0:
                    progress(f"load: {len(outcomes)}/{len(plan)} requests ended ({time.monotonic() - t0:.0f} s)")

    threads = [threading.Thread(target=worker, name=f"client-{i}", daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    progress(f"load: warm-up, {len(warm)} requests in each of {clients} client sessions")
    warmed.wait(timeout=deadline_s * (len(warm) + 1))
    sampler = MemorySampler(app_pid).start()
    baseline = sampler.rss()
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(deadline_s * (len(plan) / clients + 1))
    wall_s = time.monotonic() - t0
    sampler.stop()
    end_rss = sampler.rss()
    # Each distinct greedy request that completed, run again alone (its tokens are compared in `summarise`).
    progress("load: re-running each distinct greedy request alone")
    alone: dict[str, list[int]] = {}
    for req in plan:
        out = outcomes.get(req.index)
        if req.kind == "generate" and req.greedy and out is not None and out.status == "ok" and req.key not in alone:
            alone[req.key] = driver.call(req).token_ids
    return {"clients": clients, "app_pid": app_pid, "wall_s": wall_s, "baseline_rss": baseline, "end_rss": end_rss,
            "warmup": [asdict(o) | {"token_ids": None} for o in warm_outcomes],
            "memory_samples": [list(x) for x in sampler.samples],
            "requests": [{**asdict(req), "key": req.key,
                          "outcome": asdict(outcomes[req.index]) if req.index in outcomes else None} for req in plan],
            "alone": alone}


def summarise(raw: dict, criteria: dict) -> dict:
    """Every figure of the load table from the raw data of one run (`run_load`) and its criteria."""
    outcomes = [r["outcome"] for r in raw["requests"] if r["outcome"] is not None]
    statuses: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for out in outcomes:
        statuses[out["status"]] = statuses.get(out["status"], 0) + 1
        by_kind.setdefault(out["kind"], {}).setdefault(out["status"], 0)
        by_kind[out["kind"]][out["status"]] += 1
    served = [o["latency_s"] for o in outcomes if o["status"] == "ok"]
    lost = [r["index"] for r in raw["requests"] if r["outcome"] is None]
    unexpected = [o | {"token_ids": None} for o in [*outcomes, *raw.get("warmup", [])] if o["status"] in ("error", "hung")]
    compare_disagree = [o["index"] for o in outcomes if o["kind"] == "compare" and o["identical"] is False]
    mismatches = [{"request": r["index"], "fields": r["fields"]} for r in raw["requests"]
                  if r["key"] in raw["alone"] and r["outcome"] and r["outcome"]["status"] == "ok"
                  and r["kind"] == "generate" and r["greedy"] and r["outcome"]["token_ids"] != raw["alone"][r["key"]]]
    values = [v for _, v in raw["memory_samples"]]
    peak = max(values, default=None)
    quarters = [_mb(max(values[: max(1, len(values) * q // 4)])) for q in (1, 2, 3, 4)] if values else []
    half = values[: max(1, len(values) // 2)]
    late_growth = (peak - max(half)) / 1e6 if len(values) >= 4 else None
    baseline, end_rss = raw["baseline_rss"], raw["end_rss"]
    growth = None if baseline is None or end_rss is None else (end_rss - baseline) / 1e6
    allowance = criteria["memory_second_half_growth_mb"]
    checks = {"none_lost": len(lost) <= criteria["lost"], "none_hung": statuses.get("hung", 0) <= criteria["hung"],
              "no_unexpected_errors": len(unexpected) <= criteria["unexpected_errors"],
              "greedy_equals_alone": len(mismatches) <= criteria["greedy_differ_from_alone"],
              "compare_columns_agree": len(compare_disagree) <= criteria["compare_columns_differ"],
              "memory_bounded": late_growth is not None and late_growth <= allowance}
    return {
        "requests": len(raw["requests"]), "clients": raw["clients"], "wall_s": round(raw["wall_s"], 1),
        "served": statuses.get("ok", 0), "rejected_invalid": statuses.get("rejected", 0),
        "cancelled": statuses.get("cancelled", 0), "errors": statuses.get("error", 0), "hung": statuses.get("hung", 0),
        "lost": len(lost), "by_kind": by_kind,
        "latency_s": {"p50": _r(percentile(served, 50)), "p95": _r(percentile(served, 95)),
                      "max": _r(max(served, default=None))},
        "latency_s_by_kind": {k: {"p50": _r(percentile(v, 50)), "p95": _r(percentile(v, 95))}
                              for k in by_kind for v in [[o["latency_s"] for o in outcomes if o["kind"] == k
                                                          and o["status"] in ("ok", "rejected", "cancelled")]]},
        "greedy_checked_alone": len(raw["alone"]), "greedy_mismatches": mismatches,
        "memory": {"app_pid": raw["app_pid"], "baseline_mb": _mb(baseline), "peak_mb": _mb(peak),
                   "end_mb": _mb(end_rss),
                   "growth_mb": None if growth is None else round(growth, 1),  # end minus after warm-up
                   "second_half_growth_mb": None if late_growth is None else round(late_growth, 1),
                   "peak_by_quarter_mb": quarters,  # peak RSS up to 1/4, 1/2, 3/4 and all of the run
                   "allowance_mb": allowance, "samples": len(values)},
        "unexpected": unexpected[:20], "checks": checks, "passed": all(checks.values()),
    }


def rebuild(result: dict) -> dict:
    """The summary of a results JSON, recomputed from its raw data and criteria."""
    return json.loads(json.dumps(summarise(result["raw"], result["criteria"])))


def _r(x):
    return None if x is None else round(x, 3)


def _mb(x):
    return None if x is None else round(x / 1e6, 1)


def markdown(result: dict) -> str:
    m, lat = result["memory"], result["latency_s"]
    lines = ["| requests | clients | served | invalid, rejected as expected | cancelled | errors | hung | lost | "
             "p50 s | p95 s | peak RSS MB | RSS growth MB (whole run / second half) | greedy = alone |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {result['requests']} | {result['clients']} | {result['served']} | {result['rejected_invalid']} | "
             f"{result['cancelled']} | {result['errors']} | {result['hung']} | {result['lost']} | {lat['p50']} | "
             f"{lat['p95']} | {m['peak_mb']} | {m['growth_mb']} / {m['second_half_growth_mb']} | "
             f"{result['greedy_checked_alone']} distinct, "
             f"{len(result['greedy_mismatches'])} differ |"]
    lines += ["", "| kind | " + " | ".join(["ok", "rejected", "cancelled", "error", "hung"]) + " | p50 s | p95 s |",
              "|---|---|---|---|---|---|---|---|"]
    for kind, counts in sorted(result["by_kind"].items()):
        lat_k = result["latency_s_by_kind"][kind]
        lines.append(f"| {kind} | " + " | ".join(str(counts.get(s, 0)) for s in
                                                ("ok", "rejected", "cancelled", "error", "hung"))
                     + f" | {lat_k['p50']} | {lat_k['p95']} |")
    lines += ["", "Criteria (fixed before the run): " + criteria_text(result["criteria"]) + ".",
              "", "Checks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["checks"].items())]
    return "\n".join(lines) + "\n"


def criteria_text(c: dict) -> str:
    return (f"every request ends within {c['deadline_s']:g} s (else hung; hung at most {c['hung']}), lost at most "
            f"{c['lost']}, unexpected errors at most {c['unexpected_errors']}, greedy requests that differ from the "
            f"same request alone at most {c['greedy_differ_from_alone']}, Compare runs with differing columns at "
            f"most {c['compare_columns_differ']}, RSS peak growth over the second half at most "
            f"{c['memory_second_half_growth_mb']:g} MB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:7860/")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--short-tokens", type=int, default=8, help="max new tokens of short requests")
    p.add_argument("--long-tokens", type=int, default=24, help="max new tokens of long requests")
    p.add_argument("--long-repeat", type=int, default=2,
                   help="the long prompt is a paragraph this many times (the small test pair's window is 512 tokens)")
    p.add_argument("--distinct", type=int, default=16, help="distinct generate requests (each re-run alone after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--auth", help="USER:PASSWORD when the app requires a login")
    p.add_argument("--app-pid", type=int, help="pid of the app (default: the process listening on the URL's port)")
    p.add_argument("--deadline-s", type=float, default=600.0, help="a request with no result by then is hung")
    p.add_argument("--label", default="", help="what was loaded (pair, devices), for the report")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        p.error("--clients and --requests must be >= 1")
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "commit": git_commit(), "label": args.label,
            "command": shlex.join(["python", "benchmarks/load.py", *(argv if argv is not None else sys.argv[1:])])}
    criteria = {**CRITERIA, "deadline_s": args.deadline_s}
    if args.out:  # the criteria are on file before the first request
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out + ".json", json.dumps({"meta": meta, "criteria": criteria, "status": "running"},
                                                         indent=1))
    raw = run_load(args.url, args.clients, args.requests, args.short_tokens, args.long_tokens, args.seed, auth,
                   args.deadline_s, args.app_pid, args.long_repeat, args.distinct)
    result = json.loads(json.dumps({"meta": meta, "criteria": criteria, "raw": raw, "status": "done"}))
    result.update(rebuild(result))
    if args.out:
        write_text_atomic(args.out + ".json", json.dumps(result, indent=1))
        write_text_atomic(args.out + ".md", markdown(result))
    print(markdown(result))
    print(json.dumps({k: result[k] for k in ("served", "errors", "hung", "lost", "passed")}))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
