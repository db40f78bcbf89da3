"""What this worker runs on, and whether that meets a lane's capacity class.

A worker pod on a MIG node sees one slice (``CUDA_VISIBLE_DEVICES=MIG-<uuid>``); on a full-GPU
node, a whole GPU. Serving a ``gpu`` lane from a slice (or a MIG lane from the wrong slice)
would break the lane's promises on memory and speed, so the worker refuses at start.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from difflane.lanes import Lane
from difflane.telemetry import gpu

_MIG_PROFILE = re.compile(r"MIG\s+(\d+g\.\d+gb)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" or "cuda"
    name: str
    mig_profile: str | None = None  # e.g. "1g.18gb" for a MIG slice
    memory_bytes: int | None = None

    def describe(self) -> str:
        if self.kind == "cpu":
            return "CPU"
        return f"{self.name} (MIG {self.mig_profile})" if self.mig_profile else self.name


CPU = DeviceInfo("cpu", "cpu")


def detect(
    requested: str = "auto",
    devices: Callable[[], list[dict[str, Any]]] = gpu.devices,
    visible: Callable[[], list[str] | None] = gpu.visible_devices,
) -> DeviceInfo:
    """The device a runtime would use for ``requested`` ("auto", "cpu" or "cuda")."""
    if requested == "cpu":
        return CPU
    shown = visible()
    if shown is not None and (not shown or shown[0] in ("-1", "none", "void")):
        return CPU
    found = devices()
    if not found:
        return CPU
    if shown and shown[0].startswith("MIG-"):
        match = next((d for d in found if d["mig"] and d["uuid"] == shown[0]), None)
        if match is None:
            match = next((d for d in found if d["mig"]), None)
        if match is not None:
            profile = _MIG_PROFILE.search(match["name"])
            return DeviceInfo(
                "cuda", match["name"], profile.group(1).lower() if profile else "unknown", match["memory_bytes"]
            )
    whole = [d for d in found if not d["mig"]]
    if shown and shown[0].isdigit() and int(shown[0]) < len(whole):
        whole = whole[int(shown[0]) :]
    if not whole:
        return CPU
    return DeviceInfo("cuda", whole[0]["name"], None, whole[0]["memory_bytes"])


def unmet(device: DeviceInfo, lane: Lane) -> str | None:
    """Why ``device`` cannot serve ``lane``, or None when it can."""
    if lane.capacity == "cpu":
        return None
    if device.kind != "cuda":
        return f"lane {lane.name!r} needs capacity {lane.capacity!r}, but this worker has no GPU"
    if lane.capacity == "gpu" and device.mig_profile is not None:
        return f"lane {lane.name!r} needs a whole GPU, but this worker sees a MIG slice ({device.mig_profile})"
    if lane.mig_profile is not None and device.mig_profile != lane.mig_profile:
        seen = f"MIG {device.mig_profile}" if device.mig_profile else "a whole GPU"
        return f"lane {lane.name!r} needs a MIG {lane.mig_profile} slice, but this worker sees {seen}"
    return None
