"""The simulator against the real embedded platform, on a small case that needs no clock: the
batches it forms on the arrivals the platform recorded are the batches the platform ran.

The waits themselves are compared by ``bench/capacity_validate.py`` (figures, not assertions)."""

from __future__ import annotations

from typing import Any

from bench.capacity_harness import ts
from bench.capacity_validate import batches_of

from difflane.capacity import costs, simulator, trace
from difflane.lanes import Lane
from tests.acceptance.test_lanes import fake_platform

# The fake runtime's [slow] step: 0.2 s per step, whatever the batch. Only the order of events
# matters here (the first batch ends long before the second one's wait for company does).
FAKE = costs.CostModel(
    models={
        "tiny": costs.ModelCost(reference=costs.Size(width=64, height=64), seconds_per_step_per_image={1: 0.2, 4: 0.05})
    }
)


def test_a_batching_lane_runs_the_batches_the_simulator_forms(make_platform: Any) -> None:
    # Four jobs arrive well within the 2 s a first job waits for company: a full batch at once.
    # The two behind them are drained together after it and wait for company in vain.
    p = fake_platform(make_platform, "lanes:\n  fast: {max_batch: 4, max_wait_ms: 2000}\n  long: {}\n")
    p.serve(workers=1)
    sent = [p.submit(prompt=f"[slow] fox {i}", steps=1, seed=i, width=64, height=64) for i in range(6)]
    done = [p.wait(j["id"], ("succeeded", "failed")) for j in sent]
    assert all(j["state"] == "succeeded" for j in done)
    t0 = min(ts(j["created_at"]) for j in done)
    arrivals = [trace.Arrival(ts(j["created_at"]) - t0, "tiny", 64, 64, 1) for j in done]
    lane = Lane(name="fast", max_batch=4, max_wait_ms=2000)
    sim = simulator.LaneSimulation(simulator.LaneSetup(lane), FAKE, arrivals)
    sim.run()
    by_start: dict[float, list[int]] = {}
    for i, start in enumerate(sim.starts):
        by_start.setdefault(round(start, 6), []).append(i)
    predicted = [sorted(g) for _, g in sorted(by_start.items())]
    index = {j["id"]: i for i, j in enumerate(done)}
    measured = [sorted(index[j["id"]] for j in group) for group in batches_of(done)]
    assert measured == predicted == [[0, 1, 2, 3], [4, 5]]
    assert [j["metrics"]["batch_size"] for j in done] == [4, 4, 4, 4, 2, 2]
