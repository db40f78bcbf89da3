"""``difflane simulate``: read the inputs, run every lane, print a table, write JSON and a chart."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difflane import catalog as catalog_mod
from difflane import lanes as lanes_mod
from difflane.capacity import costs as costs_mod
from difflane.capacity import trace
from difflane.capacity.results import LaneResult
from difflane.capacity.scaling import Scaling

__all__ = ["Scaling", "Traffic", "run", "table", "to_json", "write_json"]
from difflane.capacity.simulator import LaneSetup, simulate
from difflane.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Traffic:
    trace_file: Path | None = None
    poisson: float | None = None
    duration: float | None = None
    model: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    images: int = 1
    seed: int = 1
    burst_factor: float = 1.0
    burst_period: float = 0.0
    burst_length: float = 0.0


def arrivals(traffic: Traffic, catalog: catalog_mod.Catalog) -> tuple[list[trace.Arrival], float]:
    """(arrivals, horizon): a generated trace's horizon is its duration, a file's its last arrival."""
    if (traffic.trace_file is None) == (traffic.poisson is None):
        raise ConfigError("give either --trace FILE or --poisson RATE with --duration S")
    if traffic.trace_file is not None:
        found = trace.read_csv(traffic.trace_file)
        unknown = sorted({a.model for a in found} - set(catalog.names()))
        if unknown:
            raise ConfigError(f"the trace names models not in the catalog: {', '.join(unknown)}")
        return found, found[-1].at
    assert traffic.poisson is not None
    if traffic.duration is None:
        raise ConfigError("--poisson needs --duration S")
    name = traffic.model or catalog.names()[0]
    spec = catalog.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; the catalog has {', '.join(catalog.names())}")
    d = spec.defaults
    shape = trace.Shape(name, traffic.width or d.width, traffic.height or d.height, traffic.steps or d.steps,
                        traffic.images)  # fmt: skip
    generated = trace.bursty(
        traffic.poisson,
        traffic.duration,
        shape,
        seed=traffic.seed,
        burst_factor=traffic.burst_factor,
        burst_period=traffic.burst_period,
        burst_length=traffic.burst_length,
    )
    return generated, traffic.duration


def run(
    traffic: Traffic,
    *,
    lanes_file: Path | None,
    catalog_file: Path | None,
    costs_file: Path | None,
    scaling: Scaling,
    queued_cap: int = 0,
    max_queue_wait_s: float | None = None,
) -> list[LaneResult]:
    catalog = catalog_mod.load(catalog_file)
    lanes = lanes_mod.load(lanes_file)
    catalog.check_lanes(lanes)
    costs = costs_mod.load(costs_file) if costs_file else costs_mod.builtin()
    found, horizon = arrivals(traffic, catalog)
    for model in {a.model for a in found}:
        costs.model(model)  # a missing entry is a ConfigError before anything runs
    lane_of = {m.name: m.lane for m in catalog}
    setups = [
        LaneSetup(lane, scaling, queued_cap=queued_cap, max_queue_wait_s=max_queue_wait_s or lane.max_queue_wait_s)
        for lane in lanes
    ]
    return simulate(setups, costs, found, lane_of, horizon=horizon)


COLUMNS = ("lane", "mode", "submitted", "rejected", "wait_p50_s", "wait_p95_s", "wait_p99_s", "utilisation",
           "peak_depth", "peak_workers", "gpu_hours", "cost")  # fmt: skip


def table(results: Sequence[LaneResult]) -> str:
    rows = [[str(r.summary()[c]) for c in COLUMNS] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def to_json(results: Sequence[LaneResult], scaling: Scaling, timeline: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"scaling": scaling.model_dump(mode="json"), "lanes": {}}
    for r in results:
        record = r.summary()
        if timeline:
            record["timeline"] = [dataclasses.asdict(s) for s in r.timeline]
        out["lanes"][r.lane] = record
    return out


def write_json(results: Sequence[LaneResult], scaling: Scaling, path: Path) -> None:
    path.write_text(json.dumps(to_json(results, scaling), indent=2) + "\n", encoding="utf-8")
