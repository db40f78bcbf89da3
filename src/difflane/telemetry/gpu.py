"""GPU facts from NVML (nvidia-ml-py), when there is a GPU. No GPU, no library: None, not an error."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any


@functools.cache
def _nvml() -> Any | None:
    try:
        import pynvml  # provided by nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no GPU telemetry
        return None


def utilization(index: int = 0) -> float | None:
    """The GPU's utilisation over NVML's last sample period, 0..1."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
    except Exception:  # noqa: BLE001 - MIG slices report no utilisation
        return None


def visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None when unset: every device is visible)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [d.strip() for d in raw.split(",") if d.strip()]


def devices() -> list[dict[str, Any]]:
    """Each visible NVIDIA device: name, memory, MIG profile (for a MIG slice)."""
    nvml = _nvml()
    if nvml is None:
        return []
    found: list[dict[str, Any]] = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            found.append(_describe(nvml, handle))
            found.extend(_mig_slices(nvml, handle))
    except Exception:  # noqa: BLE001
        return found
    return found


def _describe(nvml: Any, handle: Any, mig: bool = False) -> dict[str, Any]:
    name = nvml.nvmlDeviceGetName(handle)
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "memory_bytes": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        "mig": mig,
    }


def _mig_slices(nvml: Any, handle: Any) -> list[dict[str, Any]]:
    try:
        count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except Exception:  # noqa: BLE001 - not a MIG-capable device
        return []
    slices = []
    for j in range(count):
        try:
            slices.append(_describe(nvml, nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j), mig=True))
        except Exception:  # noqa: BLE001 - empty slot
            continue
    return slices


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def available() -> bool:
    """Whether NVML answers here (a GPU and its driver library)."""
    return _nvml() is not None


@dataclasses.dataclass(frozen=True)
class Sample:
    gpu: str  # the device's index (MIG slices are seen through their parent)
    utilization: float | None  # 0..1; None where NVML has none (a MIG slice)
    memory_used_bytes: int
    memory_total_bytes: int


def samples() -> list[Sample]:
    """One sample per visible device; empty without a GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    found: list[Sample] = []
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001
        return []
    for i in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:  # noqa: BLE001 - a device that went away between two calls
            continue
        found.append(Sample(str(i), utilization(i), int(memory.used), int(memory.total)))
    return found
