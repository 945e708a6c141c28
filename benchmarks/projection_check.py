"""How far the hardware model of decoding (core/evaluation/projection.py) is from measured speeds.

Two checks, both written to results/projection_check.md and .json:
1. Published batch-1 tokens/s (assets/published_batch1.json, each row with its source): the
   efficiency factors are fitted on them (core/evaluation/fitting.py); each row's error, the
   median absolute error, the worst, and the leave-one-out error (refit without the row, predict it).
2. This machine: the CPU's bandwidth, compute and per-op cost are measured here and now; with them
   the model projects the offline pair's vanilla, speculative and easyspec decoding and is compared
   with the measured runs in results/engine_baseline.json (fp32; decode only: the prefill round is
   left out of both, the accepted length is the runs' own).
Every sentence of the Markdown is computed from the numbers beside it (`findings`).
Run: python benchmarks/projection_check.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

from easyspec.core.evaluation import fitting
from easyspec.core.evaluation.bench import git_commit, machine
from easyspec.core.evaluation.cpu_device import cpu_machine, measure_cpu
from easyspec.core.evaluation.hardware import FITTED
from easyspec.core.evaluation.projection import Setting, forward, project
from easyspec.core.evaluation.shapes import PRESETS
from easyspec.core.files import write_text_atomic

MEASURED = "results/engine_baseline.json"
PAIR = ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")  # the offline pair's shapes, fp32 as it ran
CPU_SETTINGS = {"vanilla": "vanilla", "speculative": "speculative", "easyspec N=2 every-round": "easyspec"}
TARGETS = {"published_median_abs": 0.15, "published_worst_abs": 0.30, "cpu_abs": 0.15}


def published_check() -> dict:
    rows = fitting.published_rows()
    eff = fitting.fit(rows)
    errs, loo = fitting.errors(rows, eff), fitting.leave_one_out(rows, fitting.fit, fitting.predict)
    table = [{"model": r.model.name, "devices": r.devices, "source": f"{r.source}: {r.where}",
              "published": r.tokens_per_s, "projected": round(fitting.predict(r, eff), 2), "error": round(e, 4),
              "loo_error": round(x, 4)} for r, e, x in zip(rows, errs, loo)]
    fitted = {k: getattr(eff, k) for k in ("bandwidth", "replay_s", "collective_s", "collective_hop_s")}
    return {"rows": table, "fitted": fitted, "in_code": {k: getattr(FITTED, k) for k in fitted},
            "median_abs": fitting.median_abs(errs), "worst_abs": max(map(abs, errs)),
            "loo_median_abs": fitting.median_abs(loo), "loo_worst_abs": max(map(abs, loo)),
            "device": fitting.PUBLISHED_DEVICE, "context": fitting.PUBLISHED_CONTEXT}


def measured_runs(path: str = MEASURED, dtype: str = "float32") -> dict:
    """Per setting of the offline pair's runs: decode-only tokens/s (rounds after the prefill round, pooled
    over prompts), AL (tokens per drafting round), mean context and k."""
    data = json.loads(Path(path).read_text())
    out = {}
    for label in CPU_SETTINGS:
        runs = [r for r in data["runs"] if r["setting"] == label and r["dtype"] == dtype]
        tokens = sum(len(d["token_ids"]) for r in runs for d in r["rounds"][1:])
        seconds = sum(r["rounds"][-1]["end_ns"] - r["rounds"][0]["end_ns"] for r in runs) / 1e9
        drafting = [d for r in runs for d in r["rounds"] if d["drafted"]]
        steps = [d for r in runs for d in r["rounds"][1:]]
        phase = {k: sum(d["phase_s"].get(k, 0.0) for d in steps) / len(steps) for k in ("verify", "calibrate")}
        # drafting includes the calibration forward, as the projection's draft seconds do
        phase["draft"] = phase["calibrate"] + sum(sum(v for k, v in d["phase_s"].items() if k.startswith("draft."))
                                                  for d in steps) / len(steps)
        if label == "vanilla":
            phase = {"step": phase["verify"]}
        out[label] = {"runs": len(runs), "decode_tokens_per_s": tokens / seconds,
                      "accepted_length": (sum(len(d["token_ids"]) for d in drafting) / len(drafting)
                                          if drafting else None),
                      "context": statistics.mean(len(r["prompt_ids"]) + len(r["token_ids"]) / 2 for r in runs),
                      "settings": runs[0]["settings"], "phase_s_per_round": phase}
    return {"file": path, "commit": data["meta"]["commit"], "date": data["meta"]["date"],
            "draft_len": data["meta"]["draft_len"], "settings": out}


def cpu_check(cpu: dict, measured: dict) -> dict:
    dev, eff = cpu_machine(cpu)
    base, draft = (replace(PRESETS[n], bytes_per_value=4) for n in PAIR)
    s = measured["settings"]
    al_spec = s["speculative"]["accepted_length"]
    easy = s["easyspec N=2 every-round"]
    setting = Setting(devices=1, context=round(statistics.mean(v["context"] for v in s.values())),
                      draft_len=measured["draft_len"], layer_parallel=easy["settings"]["layer_parallel"],
                      al_speculative=al_spec, al_easyspec=easy["accepted_length"], cuda_graphs=False)
    p = project(base, draft, dev, setting, eff)
    rows = [{"setting": label, "measured": round(v["decode_tokens_per_s"], 3),
             "projected": round(p[CPU_SETTINGS[label]]["tokens_per_s"], 3),
             "error": round(p[CPU_SETTINGS[label]]["tokens_per_s"] / v["decode_tokens_per_s"] - 1, 4),
             "accepted_length": v["accepted_length"]} for label, v in s.items()]
    phases = {m: {k.removesuffix("_s"): round(v, 4) for k, v in p[m].items() if k.endswith("_s")}
              for m in CPU_SETTINGS.values()}
    measured_phases = [{"setting": label, **{k: round(x, 4) for k, x in v["phase_s_per_round"].items() if x > 0}}
                       for label, v in s.items()]
    # What the runs themselves imply: the base's bytes over the measured vanilla step, the verify's FLOPs over
    # the measured verify (a diagnostic of the CPU then against the CPU now, never fed back into the model).
    step, verify = forward(base, 1, setting.context), forward(base, setting.draft_len + 1, setting.context)
    implied = {"bandwidth_bytes_per_s": step.bytes / s["vanilla"]["phase_s_per_round"]["step"],
               "flops_per_s": verify.flops / s["speculative"]["phase_s_per_round"]["verify"]}
    return {"device": asdict(dev), "setting": asdict(setting), "rows": rows, "projected_phases_s": phases,
            "measured_phases_s": measured_phases, "implied_by_runs": implied,
            "worst_abs": max(abs(r["error"]) for r in rows)}


def findings(data: dict) -> list[str]:
    """The file's sentences, each computed from the numbers in `data`."""
    t, pub, cpu = data["targets"], data["published"], data["cpu"]
    out = []
    worst = max(pub["rows"], key=lambda r: abs(r["error"]))
    over = [f"{r['model']} G={r['devices']} ({r['error']:+.1%})" for r in pub["rows"]
            if abs(r["error"]) > t["published_worst_abs"]]
    met = pub["median_abs"] <= t["published_median_abs"] and not over
    verdict = "target met." if met else f"target missed by {', '.join(over) or 'the median'}."
    out.append(f"Published figures: median absolute error {pub['median_abs']:.1%} (target <= "
               f"{t['published_median_abs']:.0%}), worst {worst['model']} G={worst['devices']} at "
               f"{worst['error']:+.1%} (target <= {t['published_worst_abs']:.0%}): {verdict}")
    out.append(f"Leave-one-out (refit on the other {len(pub['rows']) - 1} rows): median absolute error "
               f"{pub['loo_median_abs']:.1%}, worst {pub['loo_worst_abs']:.1%}.")
    f = pub["fitted"]
    out.append(f"Fitted: {f['bandwidth']:.1%} of the datasheet bandwidth, {f['replay_s'] * 1e6:.0f} us per "
               f"forward (one CUDA-graph replay), {f['collective_s'] * 1e6:.1f} + {f['collective_hop_s'] * 1e6:.2f} "
               "x (G - 1) us per all-reduce.")
    drift = max(abs(f[k] / pub["in_code"][k] - 1) for k in f)
    out.append(f"The factors in core/evaluation/hardware.py differ from this fit by at most {drift:.2%}.")
    missed = [r for r in cpu["rows"] if abs(r["error"]) > t["cpu_abs"]]
    out.append("This CPU: projected / measured decode tokens/s - 1: "
               + ", ".join(f"{r['setting']} {r['error']:+.1%}" for r in cpu["rows"])
               + (f" (target within {t['cpu_abs']:.0%}: met)." if not missed else
                  f" (target within {t['cpu_abs']:.0%}: missed by " + ", ".join(
                      f"{r['setting']} {abs(r['error']) - t['cpu_abs']:.1%} points" for r in missed) + ")."))
    m = data["cpu_measurement"]
    lo = m["bandwidth_range"][0] / 1e9
    out.append(f"The CPU was measured at {m['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (the fastest of {m['repeats']} "
               f"matrix-vector products with {m['layers']} layers of {m['shape']}'s fp32 matrices; median "
               f"{m['bandwidth_median'] / 1e9:.1f}, slowest {lo:.1f} GB/s; a plain 1 GiB sum: "
               f"{m['sum_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s), "
               f"{m['flops_per_s'] / 1e9:.1f} GFLOP/s "
               f"with {m['gemm_rows']} rows and {m['op_s'] * 1e6:.1f} us per eager op, at {data['date']} with a load "
               f"average of {m['load_average']:.1f} on {m['cpus']} CPUs; the runs "
               f"it is compared with date from {data['measured']['date']} (commit {data['measured']['commit']}), on a "
               "machine shared with other work, so the load then and now may differ.")
    imp = cpu["implied_by_runs"]
    out.append(f"The runs imply {imp['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (the base's bytes over their vanilla "
               f"step) and {imp['flops_per_s'] / 1e9:.1f} GFLOP/s (the verify's FLOPs over their verify): the CPU "
               f"measured now gave {m['bandwidth_bytes_per_s'] / imp['bandwidth_bytes_per_s']:.0%} and "
               f"{m['flops_per_s'] / imp['flops_per_s']:.0%} of that.")
    for r in cpu["measured_phases_s"]:
        p = cpu["projected_phases_s"][CPU_SETTINGS[r["setting"]]]
        parts = [f"{k} {v:.3f} s measured / {p[k]:.3f} s projected" for k, v in r.items() if k in p]
        out.append(f"Per round of {r['setting']}: " + ", ".join(parts) + ".")
    return out


def markdown(data: dict) -> str:
    meta = data
    lines = ["# Projection check: the hardware model against measured decoding speeds", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- commit: {meta['commit']}", f"- libraries: {meta['libraries']}",
             "- the model: core/evaluation/projection.py (docs/projection.md); projected, not measured.", "",
             "## Findings", "", *[f"- {s}" for s in findings(data)], "",
             f"## Published batch-1 figures ({data['published']['device']}, bf16, context about "
             f"{data['published']['context']} tokens)", "",
             "| model | G | published tok/s | projected tok/s | error | leave-one-out error | source |",
             "|---|---|---|---|---|---|---|"]
    for r in data["published"]["rows"]:
        lines.append(f"| {r['model']} | {r['devices']} | {r['published']:.2f} | {r['projected']:.2f} | "
                     f"{r['error']:+.1%} | {r['loo_error']:+.1%} | {r['source']} |")
    cpu, ms = data["cpu"], data["measured"]
    lines += ["", f"## This CPU against the offline pair's measured runs (`{ms['file']}`, fp32, G = 1, "
                  f"context {cpu['setting']['context']}, k = {cpu['setting']['draft_len']})", "",
              "| setting | measured decode tok/s | projected tok/s | error | AL (measured) |", "|---|---|---|---|---|"]
    for r in cpu["rows"]:
        al = "-" if r["accepted_length"] is None else f"{r['accepted_length']:.2f}"
        lines.append(f"| {r['setting']} | {r['measured']:.2f} | {r['projected']:.2f} | {r['error']:+.1%} | {al} |")
    return "\n".join(lines) + "\n"


def run(measured_path: str = MEASURED, repeats: int = 7) -> dict:
    measured = measured_runs(measured_path)
    base = replace(PRESETS[PAIR[0]], bytes_per_value=4)
    return {"targets": TARGETS, "published": published_check(),
            "cpu_measurement": measure_cpu(base, measured["draft_len"] + 1, repeats=repeats), "measured": measured}


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measured", default=MEASURED, help="the offline pair's measured runs (engine_baseline JSON)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats of each CPU measurement (best kept)")
    ap.add_argument("--out", default="results/projection_check")
    args = ap.parse_args(argv)
    argv_used = argv if argv is not None else sys.argv[1:]
    data = {"command": shlex.join(["python", "benchmarks/projection_check.py", *argv_used]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "commit": git_commit(),
            "libraries": f"torch {torch.__version__}, python {platform.python_version()}",
            **run(args.measured, args.repeats)}
    data["cpu"] = cpu_check(data["cpu_measurement"], data["measured"])
    data["findings"] = findings(data)
    out = {"meta": {k: data[k] for k in ("command", "date", "machine", "commit", "libraries")}, **data}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps(out, indent=1))
    write_text_atomic(args.out + ".md", markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
