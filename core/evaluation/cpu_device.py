"""This CPU as a device of the hardware model: its bandwidth, compute and per-operation cost, measured.

What it is: `measure_cpu` times, with torch at its thread count, a matrix-vector product over a
1 GiB fp32 weight (the bandwidth a decode step's weight streaming achieves; a plain 1 GiB sum is
recorded beside it), the same weight against the verify's k + 1 rows (achieved FLOP/s where
decoding computes) and a tiny operation (the fixed cost of one eager kernel); `cpu_machine` turns those numbers into a
`Device` and an `Efficiency` of 1 (they are achieved values already). Gloo collectives between CPU
processes are a stated assumption (300 us and 2 GB/s each, as measured by the devices_cpu runs).
What it is not: the cost model (projection.py); on a GPU, the presets of hardware.py apply.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

from .hardware import FITTED, Device, Efficiency

GLOO_LATENCY_S, GLOO_BYTES_PER_S = 300e-6, 2e9


def _times(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)


def measure_cpu(rows: int = 6, repeats: int = 7) -> dict:
    """Bandwidth (bytes/s) of [1, 4096] x a [65536, 4096] fp32 weight (1 GiB, F.linear's layout, as the decoder
    stores it) and of a 1 GiB sum, FLOP/s of [rows, 4096] x the same weight, seconds of one tiny eager op.
    Each is the median of `repeats` timings (this machine is shared, as it was when the runs were measured);
    the fastest and slowest are kept beside it."""
    import os

    import torch
    import torch.nn.functional as F

    load = os.getloadavg()[0]  # other work on the machine while measuring (1-minute load average)
    w = torch.randn(65536, 4096)  # 1 GiB of fp32: far beyond any cache
    x, xs = torch.randn(1, 4096), torch.randn(rows, 4096)
    nbytes = w.numel() * 4
    gemv = [nbytes / t for t in _times(lambda: F.linear(x, w), repeats)]
    gemm = [2 * rows * w.numel() / t for t in _times(lambda: F.linear(xs, w), repeats)]
    sums = [nbytes / t for t in _times(lambda: w.sum(), repeats)]
    del w
    s = torch.ones(16)
    op = statistics.median(_times(lambda: [s.add(1.0) for _ in range(1000)], repeats)) / 1000
    return {"bandwidth_bytes_per_s": statistics.median(gemv), "bandwidth_range": [min(gemv), max(gemv)],
            "sum_bandwidth_bytes_per_s": statistics.median(sums), "flops_per_s": statistics.median(gemm),
            "flops_range": [min(gemm), max(gemm)], "op_s": op, "threads": torch.get_num_threads(),
            "gemm_rows": rows, "repeats": repeats, "load_average": load, "cpus": os.cpu_count()}


def cpu_machine(m: dict) -> tuple[Device, Efficiency]:
    """The measured CPU as a device (eager: one op cost per kernel), its gloo link as stated above."""
    dev = Device("this CPU", m["bandwidth_bytes_per_s"], m["flops_per_s"], GLOO_BYTES_PER_S, "gloo over loopback",
                 f"measured: 1 GiB fp32 weight x 1 and x {m['gemm_rows']} rows, {m['threads']} threads")
    return dev, replace(FITTED, bandwidth=1.0, compute=1.0, link=1.0, launch_s=m["op_s"],
                        collective_s=GLOO_LATENCY_S, collective_hop_s=0.0, source="measured on this CPU")
