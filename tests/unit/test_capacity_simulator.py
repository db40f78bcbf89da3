"""The simulator on traces whose waits are known exactly, and on M/D/1 against its formula."""

from __future__ import annotations

import pytest

from difflane.capacity import costs, plan, policy, simulator, trace
from difflane.capacity.scaling import Mode, Scaling
from difflane.jobs import GenerationRequest, Principal, new_job
from difflane.lanes import Lane
from difflane.worker.batching import batch_key

# One pipeline call of model "m" costs 1 s for 1 image at 4 steps, 1.5 s for 2, 2 s for 4.
COSTS = costs.CostModel(
    price_per_node_hour=2.0,
    models={
        "m": costs.ModelCost(
            reference=costs.Size(width=64, height=64),
            seconds_per_step_per_image={1: 0.25, 2: 0.1875, 4: 0.125},
            load_s=3.0,
        )
    },
)


def run(times: list[float], lane: Lane, scaling: Scaling | None = None, **setup: object) -> simulator.LaneSimulation:
    arrivals = [trace.Arrival(t, "m", 64, 64, 4) for t in times]
    sim = simulator.LaneSimulation(simulator.LaneSetup(lane, scaling or Scaling(), **setup), COSTS, arrivals)  # type: ignore[arg-type]
    sim.result = sim.run()  # type: ignore[attr-defined]
    return sim


def test_one_worker_without_batching_serves_in_arrival_order() -> None:
    sim = run([0.0, 0.5, 0.6, 3.0], Lane(name="a"))
    assert sim.waits == pytest.approx([0.0, 0.5, 1.4, 0.0])
    r = sim.result  # type: ignore[attr-defined]
    assert r.utilisation == pytest.approx(4.0 / 4.0)  # busy 0..3 and 3..4 of a horizon of 4 s
    assert r.peak_depth == 2


def test_a_batch_waits_max_wait_for_company_then_runs_together() -> None:
    # First job at 0 waits until 0.2 s; the one at 0.1 joins; the batch of 2 runs 0.2..1.7.
    # The job at 0.5 is next: alone, it waits 0.2 s for company after 1.7 (the worker's rule).
    sim = run([0.0, 0.1, 0.5], Lane(name="a", max_batch=4, max_wait_ms=200))
    assert sim.starts == pytest.approx([0.2, 0.2, 1.9])
    assert sim.waits == pytest.approx([0.2, 0.1, 1.4])


def test_a_full_batch_starts_at_once_and_zero_wait_drains_what_is_waiting() -> None:
    sim = run([0.0, 0.0, 0.1, 0.1, 0.1], Lane(name="a", max_batch=2, max_wait_ms=500))
    # Waiting jobs fill batches at once; the last one, alone, waits 0.5 s for company.
    assert sim.starts == pytest.approx([0.0, 0.0, 1.5, 1.5, 3.5])
    # max_wait_ms 0: a lone job starts at once; the two that queued meanwhile share the next batch.
    sim = run([0.0, 0.1, 0.1], Lane(name="a", max_batch=4, max_wait_ms=0))
    assert sim.starts == pytest.approx([0.0, 1.0, 1.0])


def test_a_worker_holds_at_most_max_held_misfits_and_the_rest_stays_queued() -> None:
    lane = Lane(name="a", max_batch=4, max_wait_ms=0)
    arrivals = [trace.Arrival(0.0, "m", 64, 64, 4)] + [trace.Arrival(0.1, "m", 64, 64, s) for s in (5, 6, 7, 8, 9)]
    sim = simulator.LaneSimulation(simulator.LaneSetup(lane), COSTS, arrivals)
    sim.max_held = 2
    depths: list[int] = []
    real_start = sim._start

    def start(w, t):  # type: ignore[no-untyped-def]
        depths.append(len(w.held))
        real_start(w, t)

    sim._start = start  # type: ignore[method-assign]
    sim.run()
    assert max(depths) == 2 and sim.completed == 6


def test_md1_mean_wait_matches_the_pollaczek_khinchine_formula() -> None:
    # rho = 0.5 with a deterministic 1 s service: Wq = rho * S / (2 * (1 - rho)) = 0.5 s.
    arrivals = trace.poisson(0.5, 40_000, trace.Shape("m", 64, 64, 4), seed=7)
    sim = simulator.LaneSimulation(simulator.LaneSetup(Lane(name="a")), COSTS, arrivals)
    result = sim.run()
    mean = sum(result.waits) / len(result.waits)
    assert mean == pytest.approx(0.5, rel=0.06)
    assert result.utilisation == pytest.approx(0.5, rel=0.03)
    assert result.gpu_hours == pytest.approx(40_000 / 3600, rel=0.01)
    assert result.cost == pytest.approx(2.0 * result.node_hours)


def test_keda_scales_from_zero_at_the_next_poll_after_node_and_pod_start() -> None:
    scaling = Scaling(mode=Mode.KEDA, polling_s=10, target_messages=1, node_startup_s=20, pod_startup_s=5)
    # Polls at 0, 10: the job that came at 1 is seen at 10; node ready 30, pod + model load 38.
    sim = run([1.0], Lane(name="a"), scaling)
    assert sim.waits == pytest.approx([37.0])


def test_keda_scales_to_target_messages_and_back_to_zero_after_cooldown() -> None:
    scaling = Scaling(mode=Mode.KEDA, polling_s=1, target_messages=2, max_replicas=3, cooldown_s=5,
                      scale_down_window_s=0, node_idle_s=0)  # fmt: skip
    sim = run([0.5] * 10 + [40.5], Lane(name="a"), scaling)
    r = sim.result  # type: ignore[attr-defined]
    assert r.peak_workers == 3  # 10 messages / 2, capped at max_replicas
    # The 10 jobs are done by ~5 s; 5 s of cooldown later the lane has no pod until the next job.
    assert [s.workers for s in r.timeline if 15 < s.t < 40] and all(s.workers == 0 for s in r.timeline if 15 < s.t < 40)
    assert sim.waits[-1] == pytest.approx(0.5 + 3.0)  # seen at the poll at 41, model load 3 s


def test_kueue_runs_one_job_per_pod_within_the_quota() -> None:
    scaling = Scaling(mode=Mode.KUEUE, quota=1, pod_startup_s=2)
    sim = run([0.0, 0.0], Lane(name="a", max_batch=8, max_wait_ms=100), scaling)
    # pod 1: ready at 0 + 2 + 3 (load), runs 5..6; pod 2 admitted at 6, runs 11..12.
    assert sim.starts == pytest.approx([5.0, 11.0])


def test_admission_by_queue_cap_and_by_predicted_wait() -> None:
    sim = run([0.0, 0.1, 0.2], Lane(name="a"), queued_cap=1)
    assert sim.rejected == 1 and sim.waits == pytest.approx([0.0, 0.9])
    sim = run([0.0, 0.1, 0.2], Lane(name="a"), max_queue_wait_s=1.5)
    # predicted starts: 1.0 (waits 0.9: in), 2.0 (waits 1.8: refused)
    assert sim.rejected == 1 and sim.waits == pytest.approx([0.0, 0.9])


def test_forecast_batches_compatible_jobs_and_uses_the_soonest_free_worker() -> None:
    k1, k2 = ("a", "m", 64, 64, 4, None, ""), ("a", "m", 64, 64, 8, None, "")
    items = [policy.Item(i, k, "m", 64, 64, 4 if k == k1 else 8, 1, 0.0) for i, k in enumerate([k1, k2, k1, k1])]
    eta = plan.forecast(items, [2.0, 0.5], 0.0, max_batch=2, max_wait_s=0.1, cost=COSTS.batch_seconds)
    # worker free at 0.5 takes jobs 0 and 2 (full: no wait), 0.5..2.0; the other at 2.0 takes
    # job 1 alone (waits 0.1 for company), 2.1..4.1; job 3 goes to the first again at 2.0 + 0.1.
    assert eta[0].start == eta[2].start == pytest.approx(0.5)
    assert eta[1].start == pytest.approx(2.1) and eta[1].finish == pytest.approx(4.1)
    assert eta[3].start == pytest.approx(2.1)


def test_the_policy_key_is_the_workers_batch_key() -> None:
    request = GenerationRequest("tiny", "p", "neg", 64, 96, 4, 7.5, 1, 1)
    job = new_job(Principal("t", "s"), request, "fast")
    assert policy.key_of("fast", "tiny", 64, 96, 4, 7.5, "neg") == batch_key(job)


def test_bursty_traces_are_seeded_and_burst() -> None:
    shape = trace.Shape("m", 64, 64, 4)
    a = trace.bursty(1.0, 1000, shape, seed=3, burst_factor=10, burst_period=100, burst_length=10)
    assert a == trace.bursty(1.0, 1000, shape, seed=3, burst_factor=10, burst_period=100, burst_length=10)
    in_burst = sum(1 for x in a if x.at % 100 >= 90)
    assert in_burst == pytest.approx(1000, rel=0.15) and len(a) - in_burst == pytest.approx(900, rel=0.15)
