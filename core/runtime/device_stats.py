"""Live device readings for a device panel: utilisation and memory per GPU (NVML), else CPU load.

What it is: a small reader over NVIDIA's management library (`nvidia-ml-py`, imported as `pynvml`)
and, when no GPU answers, `psutil`'s CPU and memory figures. Everything degrades quietly: no
driver, no GPU or no psutil gives fewer readings and a note, never an exception.
What it is not: timing of the engine's own work (that is `tracing.py`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceReading:
    name: str
    kind: str  # "gpu" | "cpu"
    utilisation_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    detail: str = ""


class DeviceMonitor:
    """Reads devices on demand. NVML is initialised on the first read and kept (one per process)."""

    def __init__(self, prefer_gpu: bool = True):
        self.prefer_gpu = prefer_gpu
        self._lock = threading.Lock()
        self._nvml = None  # the pynvml module once initialised; False once known to be unavailable
        self.note = ""

    def _nvml_module(self):
        with self._lock:
            if self._nvml is None:
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._nvml = pynvml
                except Exception as exc:  # no library, no driver, no GPU: fall back to the CPU
                    self._nvml = False
                    self.note = f"NVML unavailable ({type(exc).__name__}); showing CPU load"
            return self._nvml or None

    def gpus(self) -> list[DeviceReading]:
        nvml = self._nvml_module() if self.prefer_gpu else None
        if nvml is None:
            return []
        out = []
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                name = nvml.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else name
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                out.append(DeviceReading(f"GPU {i}", "gpu", float(util.gpu), int(mem.used), int(mem.total), name))
        except Exception as exc:  # a GPU that went away mid-read: report what was read
            self.note = f"NVML read failed ({type(exc).__name__}: {exc})"
        return out

    def cpu(self) -> list[DeviceReading]:
        try:
            import psutil
        except ImportError:
            return [DeviceReading("CPU", "cpu", None, None, None, "psutil not installed")]
        per_core = psutil.cpu_percent(interval=None, percpu=True)  # since the previous call
        vm = psutil.virtual_memory()
        total = sum(per_core) / max(1, len(per_core))
        detail = f"{len(per_core)} cores: " + ", ".join(f"{p:.0f}%" for p in per_core)
        return [DeviceReading("CPU", "cpu", float(total), int(vm.total - vm.available), int(vm.total), detail)]

    def read(self) -> list[DeviceReading]:
        """GPU readings when NVML sees GPUs, otherwise the CPU's."""
        return self.gpus() or self.cpu()
