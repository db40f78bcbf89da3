"""The validation benchmark's calibration (bench/capacity_validate.py) on records made up here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from bench.capacity_harness import ts
from bench.capacity_validate import batches_of, burst_cycles, in_run_model


def _at(t: float) -> str:
    return datetime.fromtimestamp(1_790_000_000 + t, UTC).isoformat()


def record(created: float, started: float, finished: float, execution: float, batch: int = 1) -> dict[str, Any]:
    return {
        "created_at": _at(created),
        "started_at": _at(started),
        "finished_at": _at(finished),
        "metrics": {"execution_s": execution, "batch_size": batch},
    }


def test_the_burst_keeps_only_cycles_after_its_last_submit() -> None:
    # Submits until 0.25 s, while the API competes for the CPU: the first cycle is long.
    created = [0.0, 0.1, 0.2, 0.25, 0.25]
    starts = [0.0, 0.6, 1.0, 1.4, 1.8]
    records = [record(c, s, s + 0.39, 0.38) for c, s in zip(created, starts, strict=True)]
    last_submit = max(ts(r["created_at"]) for r in records)
    assert burst_cycles(records, last_submit) == pytest.approx([0.4, 0.4, 0.4])


def test_in_run_fits_a_cost_per_batch_and_per_image_from_back_to_back_batches() -> None:
    # Batches of 1, 2 and 4 back to back: pipeline 0.4 s each; cycle = 0.4 + 0.01 + 0.02 * images.
    records: list[dict[str, Any]] = []
    t = 0.0
    for size in (1, 2, 4, 2, 1):
        cycle = 0.4 + 0.01 + 0.02 * size
        records += [record(t - 0.5, t + 0.001 * i, t + cycle - 0.001, 0.4, size) for i in range(size)]
        t += cycle
    assert [len(g) for g in batches_of(records)] == [1, 2, 4, 2, 1]
    model = in_run_model(records, steps=2, max_batch=4, max_wait_ms=0).model("tiny")
    assert model.batch_overhead_s == pytest.approx(0.01, abs=1e-6)
    assert model.image_overhead_s == pytest.approx(0.02, abs=1e-6)
    assert model.seconds_per_step_per_image == pytest.approx({1: 0.2, 2: 0.1, 4: 0.05})


def test_in_run_leaves_out_a_batch_that_waited_for_company() -> None:
    # The second batch is not full and the lane waits 0.5 s for company: its start says nothing
    # of the first batch's cost.
    first = [record(0.0, 0.0, 0.43, 0.4, 1)]
    second = [record(0.1, 0.93, 1.36, 0.4, 1)]
    model = in_run_model(first + second, steps=2, max_batch=4, max_wait_ms=500).model("tiny")
    assert model.batch_overhead_s == 0.0  # no cycle kept: the pipeline time alone
