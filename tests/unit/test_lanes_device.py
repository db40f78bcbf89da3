"""Lanes files, and whether a device meets a lane's capacity class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from difflane import catalog, lanes
from difflane.errors import ConfigError
from difflane.worker import device

H100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "memory_bytes": 80 * 2**30, "mig": False}
SLICE = {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "uuid": "MIG-abc", "memory_bytes": 10 * 2**30, "mig": True}


def test_lanes_file(tmp_path: Path) -> None:
    path = tmp_path / "lanes.yaml"
    path.write_text(
        "lanes:\n"
        "  fast: {capacity: mig-1g.18gb, max_batch: 8, max_wait_ms: 20, timeout_s: 60}\n"
        "  long: {capacity: gpu, timeout_s: 3600}\n"
        "  big: {capacity: gpu, timeout_s: 3600}\n"
        "  std: {capacity: gpu, on_oom: big, compile: true}\n"
    )
    got = lanes.load(path)
    assert got["fast"].mig_profile == "1g.18gb" and got["fast"].warmup_shapes() == (1, 8)
    assert got["long"].needs_gpu and got["long"].max_batch == 1 and got["std"].on_oom == "big"


@pytest.mark.parametrize(
    "text",
    [
        "lanes: {}",
        "lanes:\n  Fast: {}",  # not a valid name
        "lanes:\n  a: {capacity: tpu}",
        "lanes:\n  a: {max_batch: 0}",
        "lanes:\n  a: {on_oom: nowhere}",
        "lanes:\n  a: {on_oom: a}",
        "lanes:\n  a: {surprise: 1}",
    ],
)
def test_bad_lanes_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "lanes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        lanes.load(path)


def test_catalog_models_must_name_existing_lanes() -> None:
    only_long = lanes.Lanes([lanes.Lane(name="long")])
    with pytest.raises(ConfigError, match="tiny"):
        catalog.builtin().check_lanes(only_long)
    catalog.builtin().check_lanes(lanes.builtin())


def detect(found: list[dict[str, Any]], visible: list[str] | None, requested: str = "auto") -> device.DeviceInfo:
    return device.detect(requested, devices=lambda: found, visible=lambda: visible)


def test_detects_cpu_gpu_and_mig() -> None:
    assert detect([], None).kind == "cpu"
    assert detect([H100], []).kind == "cpu"  # CUDA_VISIBLE_DEVICES="" hides every GPU
    assert detect([H100], None, requested="cpu").kind == "cpu"
    whole = detect([H100, SLICE], ["0"])
    assert whole.kind == "cuda" and whole.mig_profile is None
    mig = detect([H100, SLICE], ["MIG-abc"])
    assert mig.kind == "cuda" and mig.mig_profile == "1g.10gb"


@pytest.mark.parametrize(
    ("found", "visible", "capacity", "ok"),
    [
        ([], None, "cpu", True),
        ([], None, "gpu", False),
        ([H100], None, "gpu", True),
        ([H100, SLICE], ["MIG-abc"], "gpu", False),
        ([H100, SLICE], ["MIG-abc"], "mig-1g.10gb", True),
        ([H100, SLICE], ["MIG-abc"], "mig-3g.40gb", False),
        ([H100], None, "mig-1g.10gb", False),
        ([H100], None, "cpu", True),
    ],
)
def test_capacity_classes(found: list[dict[str, Any]], visible: list[str] | None, capacity: str, ok: bool) -> None:
    lane = lanes.Lane(name="x", capacity=capacity)
    reason = device.unmet(detect(found, visible), lane)
    assert (reason is None) == ok
    if not ok:
        assert "lane 'x'" in reason  # type: ignore[operator]
