"""Fitting the hardware model's efficiencies to published batch-1 decoding speeds, and checking the fit.

What it is: the published rows (assets/published_batch1.json: tokens/s with their source, the
models' shapes, the hardware), the linear least-squares fit of the efficiency factors on them
(relative error weighted, closed form: no optimiser), and a leave-one-out check that refits
without each row in turn and predicts it. At batch 1 every published row is memory-bound (the
fit asserts it), so one forward's seconds are linear in the unknowns:
    t = bytes / (eta x datasheet bandwidth) + replay + collectives x (latency + (G - 1) x hop)
        + ring bytes / link bandwidth (known).
What it is not: the cost model itself (projection.py) or the report (benchmarks/projection_check.py).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from importlib import resources
from typing import Callable, Sequence

from .hardware import DEVICES, FITTED, Efficiency
from .projection import Machine, Work, forward
from .shapes import ModelShape

# gpt-fast's benchmark: a 5-token prompt and 200 new tokens, so about 105 cached tokens on average.
PUBLISHED_CONTEXT = 105
PUBLISHED_DEVICE = "a100-80gb"


@dataclass(frozen=True)
class Published:
    source: str
    where: str
    model: ModelShape
    devices: int
    tokens_per_s: float

    @property
    def label(self) -> str:
        return f"{self.model.name} G={self.devices}"


def published_rows() -> list[Published]:
    data = json.loads(resources.files("easyspec.assets").joinpath("published_batch1.json").read_text("utf-8"))
    models = {name: ModelShape(name, m["layers"], m["hidden"], m["heads"], m["kv_heads"], m["hidden"] // m["heads"],
                               m["intermediate"], m["vocab"], m["tied"]) for name, m in data["models"].items()}
    return [Published(r["source"], data["sources"][r["source"]]["where"], models[r["model"]], r["gpus"],
                      r["tokens_per_s"]) for r in data["rows"]]


def step_work(row: Published) -> Work:
    """One decode step as gpt-fast runs it: TP over the row's GPUs, the LM head replicated (not sharded)."""
    return forward(row.model, 1, PUBLISHED_CONTEXT, 1, row.devices, head_sharded=False)


def least_squares(x: Sequence[Sequence[float]], y: Sequence[float], w: Sequence[float]) -> list[float]:
    """argmin sum w_i (x_i . theta - y_i)^2 by the normal equations (Gauss-Jordan with pivoting)."""
    n = len(x[0])
    a = [[sum(wi * r[i] * r[j] for r, wi in zip(x, w)) for j in range(n)] + [sum(wi * r[i] * yi for r, yi, wi in
                                                                              zip(x, y, w))] for i in range(n)]
    for c in range(n):
        p = max(range(c, n), key=lambda i: abs(a[i][c]))
        a[c], a[p] = a[p], a[c]
        if abs(a[c][c]) < 1e-300:
            raise ValueError("the fit is underdetermined: too few distinct rows")
        for i in range(n):
            if i != c:
                f = a[i][c] / a[c][c]
                a[i] = [u - f * v for u, v in zip(a[i], a[c])]
    return [a[i][n] / a[i][i] for i in range(n)]


def fit(rows: Sequence[Published], base: Efficiency = FITTED) -> Efficiency:
    """Bandwidth efficiency, replay cost and collective latency (fixed and per hop) from the rows."""
    dev = DEVICES[PUBLISHED_DEVICE]
    x, y, w = [], [], []
    for r in rows:
        work = step_work(r)
        t = 1 / r.tokens_per_s
        x.append([work.bytes / dev.bandwidth, work.replays, work.collectives, work.collectives * (r.devices - 1)])
        y.append(t - work.link_bytes / (dev.link * base.link))
        w.append(1 / t ** 2)  # relative error
    inv_eta, replay, lat, hop = least_squares(x, y, w)
    return replace(base, bandwidth=1 / inv_eta, replay_s=replay, collective_s=lat, collective_hop_s=hop)


def predict(row: Published, eff: Efficiency) -> float:
    """Projected tokens/s of a published row (asserting the step is memory-bound, as the fit assumes)."""
    mc = Machine(DEVICES[PUBLISHED_DEVICE], eff, cuda_graphs=True)
    work = step_work(row)
    assert work.flops / (mc.device.flops * eff.compute) < work.bytes / (mc.device.bandwidth * eff.bandwidth)
    return 1 / mc.seconds(work)


def leave_one_out(rows: Sequence, fit_fn: Callable, predict_fn: Callable) -> list[float]:
    """Relative error of each row predicted by a fit on all the other rows: predicted / measured - 1."""
    out = []
    for i, row in enumerate(rows):
        model = fit_fn([r for j, r in enumerate(rows) if j != i])
        out.append(predict_fn(row, model) / row.tokens_per_s - 1)
    return out


def errors(rows: Sequence[Published], eff: Efficiency) -> list[float]:
    return [predict(r, eff) / r.tokens_per_s - 1 for r in rows]


def median_abs(errs: Sequence[float]) -> float:
    return statistics.median(abs(e) for e in errs)


def validation(eff: Efficiency = FITTED) -> dict:
    """The model's error on the published rows with `eff`, and leave-one-out (what reports quote)."""
    rows = published_rows()
    errs, loo = errors(rows, eff), leave_one_out(rows, fit, predict)
    return {"rows": len(rows), "median_abs": median_abs(errs), "worst_abs": max(map(abs, errs)),
            "loo_median_abs": median_abs(loo), "loo_worst_abs": max(map(abs, loo)),
            "source": "; ".join(sorted({r.where for r in rows}))}
