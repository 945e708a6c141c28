"""This CPU as a device of the hardware model: its bandwidth, compute and per-operation cost, measured.

What it is: `measure_cpu` times, with torch at its thread count, what a decode step does to memory:
one matrix-vector product with every weight matrix of a few layers in a model's own shapes (q/k/v,
o, gate/up, down; random fp32 values, as the decoder lays them out): the bandwidth decoding can
achieve here. The same matrices against the verify's k + 1 rows give the FLOP/s where decoding
computes, and a tiny operation the fixed cost of one eager kernel; a plain 1 GiB sum is recorded
beside them. `cpu_machine` turns those numbers into a `Device` and an `Efficiency` of 1 (they are
achieved values already). Gloo collectives between CPU processes are a stated assumption (300 us
and 2 GB/s each, as measured by the devices_cpu runs).
What it is not: the cost model (projection.py) or a run of the model; on a GPU, the presets of
hardware.py apply.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

from .hardware import FITTED, Device, Efficiency
from .shapes import ModelShape

GLOO_LATENCY_S, GLOO_BYTES_PER_S = 300e-6, 2e9


def _times(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)


def measure_cpu(shape: ModelShape, rows: int = 6, layers: int = 4, repeats: int = 7) -> dict:
    """Bandwidth (bytes/s) of one-row products with `layers` layers of `shape`'s fp32 weight matrices, FLOP/s of
    `rows`-row products with them, seconds of one tiny eager op, and a 1 GiB sum's bandwidth. Each is the fastest
    of `repeats` timings, the one least disturbed by other work on a shared machine; the median and the slowest
    are kept beside it."""
    import os

    import torch
    import torch.nn.functional as F

    load = os.getloadavg()[0]  # other work on the machine while measuring (1-minute load average)
    d, hd = shape.hidden, shape.head_dim
    sizes = [((shape.heads + 2 * shape.kv_heads) * hd, d), (d, shape.heads * hd), (2 * shape.intermediate, d),
             (d, shape.intermediate)]
    weights = [torch.randn(o, i) for _ in range(layers) for o, i in sizes]  # [out, in], as F.linear takes them
    inputs = {n: {i: torch.randn(n, i) for _, i in sizes} for n in (1, rows)}
    nbytes, params = sum(w.numel() * 4 for w in weights), sum(w.numel() for w in weights)

    def step(n: int):
        for w in weights:
            F.linear(inputs[n][w.shape[1]], w)

    gemv = [nbytes / t for t in _times(lambda: step(1), repeats)]
    gemm = [2 * rows * params / t for t in _times(lambda: step(rows), repeats)]
    del weights
    big = torch.ones(2 ** 28)  # 1 GiB of fp32: far beyond any cache
    sums = [big.numel() * 4 / t for t in _times(lambda: big.sum(), repeats)]
    del big
    s = torch.ones(16)
    op = _times(lambda: [s.add(1.0) for _ in range(1000)], repeats)[0] / 1000
    return {"bandwidth_bytes_per_s": max(gemv), "bandwidth_median": statistics.median(gemv),
            "bandwidth_range": [min(gemv), max(gemv)], "sum_bandwidth_bytes_per_s": max(sums),
            "flops_per_s": max(gemm), "flops_median": statistics.median(gemm), "flops_range": [min(gemm), max(gemm)],
            "op_s": op, "threads": torch.get_num_threads(),
            "shape": shape.name, "layers": layers, "gemm_rows": rows, "repeats": repeats, "load_average": load,
            "cpus": os.cpu_count()}


def cpu_machine(m: dict) -> tuple[Device, Efficiency]:
    """The measured CPU as a device (eager: one op cost per kernel), its gloo link as stated above."""
    dev = Device("this CPU", m["bandwidth_bytes_per_s"], m["flops_per_s"], GLOO_BYTES_PER_S, "gloo over loopback",
                 f"measured: {m['layers']} layers of {m['shape']}'s fp32 matrices x 1 and x {m['gemm_rows']} rows, "
                 f"{m['threads']} threads")
    return dev, replace(FITTED, bandwidth=1.0, compute=1.0, link=1.0, launch_s=m["op_s"],
                        collective_s=GLOO_LATENCY_S, collective_hop_s=0.0, source="measured on this CPU")
