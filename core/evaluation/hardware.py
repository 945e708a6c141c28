"""Accelerators for the hardware model of decoding: datasheet numbers and fitted efficiencies.

What it is: `Device` (memory bandwidth, dense bf16 FLOP/s and the link between devices, each
from a vendor datasheet), named presets, `Efficiency` (what fraction of the datasheet a decode
step achieves and the fixed costs per launch, per CUDA-graph replay and per collective: fitted by
benchmarks/projection_check.py to published batch-1 measurements, results/projection_check.md),
and `load_device` for a user's own device in a small JSON or TOML file.
What it is not: the cost model (core/evaluation/projection.py) or a measurement.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

GB, TFLOPS = 1e9, 1e12


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float  # memory bandwidth, bytes/s (datasheet)
    flops: float  # dense bf16 tensor FLOP/s (datasheet, without sparsity)
    link: float  # bytes/s one device sends to its peers (one direction; datasheet)
    link_name: str
    source: str

    def __post_init__(self) -> None:
        for f in ("bandwidth", "flops", "link"):
            if not getattr(self, f) > 0:
                raise ValueError(f"device {self.name}: {f} must be > 0; got {getattr(self, f)}")


A100_SHEET = "NVIDIA A100 Tensor Core GPU datasheet (2021), SXM column"
# NVLink figures are the datasheet's total (both directions) halved: a collective's bus bandwidth
# is what one GPU sends. PCIe: x16 lanes, one direction.
DEVICES = {d.name: d for d in (
    Device("a100-40gb", 1555 * GB, 312 * TFLOPS, 300 * GB, "NVLink 3 (600 GB/s)", A100_SHEET),
    Device("a100-80gb", 2039 * GB, 312 * TFLOPS, 300 * GB, "NVLink 3 (600 GB/s)", A100_SHEET),
    Device("h100-sxm", 3350 * GB, 989 * TFLOPS, 450 * GB, "NVLink 4 (900 GB/s)",
           "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM column"),
    Device("h100-pcie", 2000 * GB, 756 * TFLOPS, 64 * GB, "PCIe Gen5 x16 (128 GB/s)",
           "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 PCIe column"),
    Device("h200", 4800 * GB, 989 * TFLOPS, 450 * GB, "NVLink 4 (900 GB/s)",
           "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM column"),
    Device("l40s", 864 * GB, 362 * TFLOPS, 32 * GB, "PCIe Gen4 x16 (64 GB/s), no NVLink",
           "NVIDIA L40S GPU datasheet (2023)"),
    Device("b200", 8000 * GB, 2250 * TFLOPS, 900 * GB, "NVLink 5 (1.8 TB/s)",
           "NVIDIA HGX B200 datasheet (2024), per GPU"),
)}


@dataclass(frozen=True)
class Efficiency:
    bandwidth: float  # achieved / datasheet memory bandwidth (fitted)
    replay_s: float  # fixed cost of one forward with CUDA graphs: one replay, sampling aside (fitted)
    collective_s: float  # latency of one collective (fitted)
    collective_hop_s: float  # added latency per further peer, ring algorithms (fitted)
    compute: float = 0.6  # achieved / datasheet FLOP/s; assumed: batch-1 rows never reach it
    link: float = 0.8  # achieved / datasheet link bandwidth; assumed: batch-1 messages are latency-bound
    launch_s: float = 5e-6  # one kernel launch in eager mode; assumed: every published row used CUDA graphs
    source: str = ""

    def collective_latency(self, devices: int) -> float:
        return 0.0 if devices == 1 else self.collective_s + self.collective_hop_s * (devices - 1)


# Written from results/projection_check.json (benchmarks/projection_check.py fits them on
# assets/published_batch1.json; tests/test_projection.py checks that the fit still gives them).
FITTED = Efficiency(bandwidth=0.7130, replay_s=410.1e-6, collective_s=12.69e-6, collective_hop_s=1.138e-6,
                    source="fitted to gpt-fast's batch-1 tokens/s on 8x A100-80GB (results/projection_check.md)")


def device(name: str) -> Device:
    key = name.strip().lower()
    if key in DEVICES:
        return DEVICES[key]
    if Path(name).suffix.lower() in (".json", ".toml") or Path(name).exists():
        return load_device(name)[0]
    raise ValueError(f"unknown hardware {name!r}: a preset ({', '.join(DEVICES)}) or a .json/.toml file")


def load_device(path: str | Path) -> tuple[Device, Efficiency]:
    """A user-defined device: name, bandwidth_gb_s, bf16_tflops, link_gb_s (one direction), optional
    source, and optional efficiency fields (bandwidth, replay_s, collective_s, ...) over the fitted ones."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such device file")
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{p}: not a valid {p.suffix.lstrip('.').upper() or 'JSON'} device file ({exc})") from None
    try:
        dev = Device(str(data.get("name", p.stem)), float(data["bandwidth_gb_s"]) * GB,
                     float(data["bf16_tflops"]) * TFLOPS, float(data["link_gb_s"]) * GB,
                     str(data.get("link_name", "user link")), str(data.get("source", f"user file {p.name}")))
    except KeyError as exc:
        raise ValueError(f"{p}: the device file needs {exc.args[0]} (and bandwidth_gb_s, bf16_tflops, "
                         "link_gb_s)") from None
    except (TypeError, ValueError):
        raise ValueError(f"{p}: bandwidth_gb_s, bf16_tflops and link_gb_s must be positive numbers") from None
    known = {f.name for f in fields(Efficiency)} - {"source"}
    eff = {k: float(v) for k, v in data.get("efficiency", {}).items() if k in known}
    return dev, replace(FITTED, **eff, source=FITTED.source + (f"; {', '.join(eff)} from {p.name}" if eff else ""))
