"""Queue position, ETA and admission by prediction: the forecaster on a memory store with a
fixed clock, and the API's 429 queue_full, JSON fields and SSE queue events."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from difflane import lanes as lanes_mod
from difflane import wiring
from difflane.api import problems
from difflane.api.app import create_app
from difflane.capacity import costs, live, plan
from difflane.errors import TooManyRequests
from difflane.jobs import GenerationRequest, Job, Principal, new_job
from difflane.settings import Settings
from difflane.testing import MemoryJobStore

T0 = 1_000_000.0
# tiny at 64x64, 4 steps: 1 s per image alone, a batch of 2 costs 1.5 s.
TINY_COST = costs.ModelCost(reference=costs.Size(width=64, height=64), seconds_per_step_per_image={1: 0.25, 2: 0.1875})
COSTS = costs.CostModel(models={"tiny": TINY_COST})
COSTS_YAML = """models:
  tiny:
    reference: {width: 64, height: 64}
    seconds_per_step_per_image: {1: 0.25, 2: 0.1875}
"""
OWNER = Principal("t", "s")


def job(at: float, steps: int = 4) -> Job:
    return new_job(OWNER, GenerationRequest("tiny", "p", "", 64, 64, steps, 7.5, 1, 1), "fast", now=at)


def at_once(task: Callable[[], Any]) -> Future[Any]:
    """A background for the forecaster that lists in the caller's thread, before it returns."""
    done: Future[Any] = Future()
    done.set_result(task())
    return done


def listing_every_look(
    store: MemoryJobStore, lanes: lanes_mod.Lanes, workers: int, now: list[float]
) -> live.LiveForecaster:
    """The reference: a forecaster that lists the store whole at every call."""
    return live.LiveForecaster(
        store,
        lanes,
        COSTS,
        workers,
        ttl_s=0.0,
        relist_s=0.0,
        safety_relist_s=0.0,
        clock=lambda: now[0],
        background=at_once,
    )


def forecaster(store: MemoryJobStore, lane: str, workers: int, now: list[float]) -> live.LiveForecaster:
    lanes = lanes_mod.parse(f"lanes:\n  fast: {lane}\n")
    return live.LiveForecaster(store, lanes, COSTS, workers, ttl_s=0.0, clock=lambda: now[0])


def test_queued_jobs_get_positions_and_etas_behind_the_running_batch() -> None:
    store, now = MemoryJobStore(), [T0]
    running = store.create(job(T0 - 5))[0]
    store.update(running.start("w1", 30, now=T0 - 0.25), running.version)  # ends at T0 + 0.75
    queued = [store.create(job(T0 - 4 + i))[0] for i in range(3)]
    f = forecaster(store, "{max_batch: 1}", 1, now)
    got = [f.annotate(j)["queue"] for j in queued]
    assert [q["position"] for q in got] == [1, 2, 3]
    assert [q["eta_start_s"] for q in got] == [0.75, 1.75, 2.75]
    assert [q["eta_finish_s"] for q in got] == [1.75, 2.75, 3.75]
    assert f.annotate(store.get(running.id))["eta_finish_s"] == 0.75  # type: ignore[arg-type]


def test_compatible_jobs_share_a_batch_and_idle_workers_start_now() -> None:
    store, now = MemoryJobStore(), [T0]
    queued = [store.create(job(T0 - 3 + i, steps=s))[0] for i, s in enumerate([4, 8, 4])]
    f = forecaster(store, "{max_batch: 2, max_wait_ms: 100}", 2, now)
    q = [f.annotate(j)["queue"] for j in queued]
    # jobs 0 and 2 fill a batch at once on worker 1 (1.5 s). Worker 1's drain received job 1 on
    # the way and holds it (the worker's rule), so it starts after that batch, waiting 0.1 s for
    # company: 1.6..3.6, though worker 2 is idle.
    assert (q[0]["eta_start_s"], q[2]["eta_start_s"], q[0]["eta_finish_s"]) == (0.0, 0.0, 1.5)
    assert (q[1]["eta_start_s"], q[1]["eta_finish_s"]) == (1.6, 3.6)
    assert [x["position"] for x in q] == [1, 2, 3]  # queue order, whatever the batches


def test_idle_workers_start_now_when_nothing_is_held() -> None:
    store, now = MemoryJobStore(), [T0]
    queued = [store.create(job(T0 - 3 + i, steps=s))[0] for i, s in enumerate([4, 4, 8])]
    f = forecaster(store, "{max_batch: 2, max_wait_ms: 100}", 2, now)
    q = [f.annotate(j)["queue"] for j in queued]
    # jobs 0 and 1 fill worker 1's batch before its drain reaches job 2; worker 2 takes job 2.
    assert (q[0]["eta_start_s"], q[1]["eta_start_s"]) == (0.0, 0.0)
    assert (q[2]["eta_start_s"], q[2]["eta_finish_s"]) == (0.1, 2.1)


def test_admission_refuses_a_submit_predicted_past_the_lanes_limit() -> None:
    store, now = MemoryJobStore(), [T0]
    f = forecaster(store, "{max_batch: 1, max_queue_wait_s: 2.5}", 1, now)
    admitted = []
    for i in range(5):
        j = job(T0 + i * 0.001)
        try:
            f.admit(j)
        except TooManyRequests as exc:
            assert exc.code == "queue_full" and i == 3  # predicted to start at 3 s > 2.5 s
            assert problems.headers_of(exc)["Retry-After"] == "1"  # 3 - 2.5, at least a second
            break
        store.create(j)
        admitted.append(j)
    assert len(admitted) == 3


def test_a_job_without_a_cost_entry_gets_no_eta() -> None:
    store, now = MemoryJobStore(), [T0]
    other = dataclasses.replace(job(T0), request=dataclasses.replace(job(T0).request, model="unknown"))
    store.create(other)
    assert forecaster(store, "{}", 1, now).annotate(other) == {"queue": None, "eta_finish_s": None}


# --- through the API ---------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "lanes.yaml").write_text(
        "lanes:\n  fast: {capacity: cpu, max_batch: 1, max_queue_wait_s: 2.5}\n", encoding="utf-8"
    )
    (tmp_path / "costs.yaml").write_text(COSTS_YAML, encoding="utf-8")
    settings = Settings(
        store="memory", dispatch="memory", lanes=tmp_path / "lanes.yaml", costs=tmp_path / "costs.yaml", workers=1
    )
    parts = wiring.build(settings)
    with TestClient(create_app(settings, components=parts)) as c:  # no worker: jobs stay queued
        yield c


BODY = {"model": "tiny", "prompt": "a fox", "steps": 4}


def test_submit_carries_the_queue_and_a_full_lane_answers_429_without_a_job(client: TestClient) -> None:
    jobs = [client.post("/v1/jobs", json=BODY).json() for _ in range(3)]
    assert [j["queue"]["position"] for j in jobs] == [1, 2, 3]
    assert jobs[2]["queue"]["eta_start_s"] == pytest.approx(2.0, abs=0.1)
    assert jobs[2]["eta_finish_s"] == pytest.approx(3.0, abs=0.1)
    r = client.post("/v1/jobs", json=BODY)
    assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    assert int(r.headers["Retry-After"]) >= 1
    assert len(client.get("/v1/jobs").json()["jobs"]) == 3  # nothing was created
    read = client.get(jobs[0]["links"]["self"]).json()
    assert read["queue"]["position"] == 1


def test_the_event_stream_sends_queue_updates_and_ends_with_the_job(client: TestClient) -> None:
    first, second = (client.post("/v1/jobs", json=BODY).json() for _ in range(2))
    seen: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/jobs/{second['id']}/events") as r:
        lines = r.iter_lines()
        for line in lines:
            if not line.startswith("event: "):
                continue
            kind, data = line.removeprefix("event: "), json.loads(next(lines).removeprefix("data: "))
            seen.append((kind, data))
            if kind == "queue" and data["queue"]["position"] == 2:
                client.post(f"/v1/jobs/{first['id']}/cancel")  # the job ahead leaves
            elif kind == "queue" and data["queue"]["position"] == 1:
                client.post(f"/v1/jobs/{second['id']}/cancel")  # ends the stream
    kinds = [k for k, _ in seen]
    assert kinds[0] == "state" and seen[0][1]["queue"]["position"] == 2  # the whole job carries it too
    positions = [d["queue"]["position"] for k, d in seen if k == "queue"]
    assert positions == [2, 1]
    assert kinds[-1] == "state" and seen[-1][1]["state"] == "cancelled" and seen[-1][1]["queue"] is None


def test_a_job_created_after_the_cached_listing_waits_behind_it() -> None:
    store, now = MemoryJobStore(), [T0]
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 1}\n")
    f = live.LiveForecaster(store, lanes, COSTS, 1, ttl_s=60.0, clock=lambda: now[0])
    first = store.create(job(T0 - 1))[0]
    assert f.annotate(first)["queue"]["position"] == 1  # the listing is now cached for a minute
    second = store.create(job(T0))[0]
    assert f.annotate(second)["queue"] == {"position": 2, "eta_start_s": 1.0, "eta_finish_s": 2.0}


def test_a_submit_behind_limit_waiting_jobs_gets_no_position_and_costs_no_replan() -> None:
    store, now = MemoryJobStore(), [T0]
    queued = [store.create(job(T0 - 10 + i))[0] for i in range(3)]
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 1}\n")
    f = live.LiveForecaster(store, lanes, COSTS, 1, ttl_s=60, limit=3, clock=lambda: now[0])
    assert [f.annotate(j)["queue"]["position"] for j in queued] == [1, 2, 3]
    late = store.create(job(T0))[0]  # created after the listing, behind `limit` waiting jobs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan.Plan, "extend", lambda *a: pytest.fail("planned a job past the limit"))
        assert f.annotate(late) == {"queue": None, "eta_finish_s": None}


@pytest.mark.parametrize("lane", ["{max_batch: 1}", "{max_batch: 8, max_wait_ms: 20, max_queue_wait_s: 600}"])
def test_jobs_submitted_after_the_listing_get_what_a_fresh_listing_plans(lane: str) -> None:
    store, now = MemoryJobStore(), [T0]
    running = store.create(job(T0 - 5))[0]
    store.update(running.start("w1", 30, now=T0 - 0.25), running.version)
    lanes = lanes_mod.parse(f"lanes:\n  fast: {lane}\n")
    cached = live.LiveForecaster(store, lanes, COSTS, 2, ttl_s=60.0, clock=lambda: now[0])
    fresh = forecaster(store, lane, 2, now)  # lists the store again for every call
    submitted = []
    for i in range(40):
        j = job(T0 + i * 0.001, steps=[4, 4, 8][i % 3])
        cached.admit(j)  # the submit's path: admit, write, answer
        store.create(j)
        assert cached.annotate(j) == fresh.annotate(j)
        submitted.append(j)
    assert [cached.annotate(j) for j in submitted] == [fresh.annotate(j) for j in submitted]
    assert {cached.annotate(j)["queue"]["position"] for j in submitted} == set(range(1, 41))


def test_following_the_change_log_sees_what_a_new_listing_sees() -> None:
    store, now = MemoryJobStore(), [T0]
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 2, max_wait_ms: 20}\n")
    following = live.LiveForecaster(store, lanes, COSTS, 2, ttl_s=0.0, relist_s=1e9, clock=lambda: now[0])
    listing = listing_every_look(store, lanes, 2, now)
    jobs = [store.create(job(T0 - 10 + i, steps=[4, 8][i % 2]))[0] for i in range(6)]

    def seen() -> list[dict[str, Any]]:
        mine = [following.annotate(store.get(j.id)) for j in jobs]  # type: ignore[arg-type]
        assert mine == [listing.annotate(store.get(j.id)) for j in jobs]  # type: ignore[arg-type]
        return mine

    assert seen()[0]["queue"]["position"] == 1
    store.update(jobs[0].start("w1", 30, now=T0 - 0.5), jobs[0].version)  # a worker claims one
    assert seen()[0]["queue"] is None and seen()[1]["queue"]["position"] == 1
    now[0] += 2.0  # it overran: its ETA follows its progress
    running = store.get(jobs[0].id)
    assert running is not None
    store.update(dataclasses.replace(running, progress=dataclasses.replace(running.progress, step=2)), running.version)
    seen()
    running = store.get(jobs[0].id)
    assert running is not None
    store.update(running.cancel(), running.version)  # asked to stop; another process cancels a queued one
    store.update(jobs[3].cancel(), jobs[3].version)
    jobs.append(store.create(job(T0 + 1))[0])  # another API process admits one
    assert seen()[-1]["queue"]["position"] == 5  # behind jobs 1, 2, 4 and 5
    assert store.change_reads > 0


def test_a_look_behind_the_pruned_change_log_lists_the_queue_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store, now = MemoryJobStore(changes_kept=2, prune_every=1), [T0]
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 1}\n")
    following = live.LiveForecaster(
        store, lanes, COSTS, 1, ttl_s=0.0, relist_s=1e9, clock=lambda: now[0], background=at_once
    )  # its listing after the gap lands within the look (the background's timing is test_capacity_live_relist.py's)
    listing = listing_every_look(store, lanes, 1, now)
    jobs = [store.create(job(T0 - 10 + i))[0] for i in range(4)]
    assert following.annotate(jobs[3])["queue"]["position"] == 4
    listings: list[int] = []
    list_unfinished = store.list_unfinished
    monkeypatch.setattr(store, "list_unfinished", lambda limit: listings.append(limit) or list_unfinished(limit))
    store.update(jobs[0].cancel(), jobs[0].version)  # both pruned before the next look reads them
    store.update(jobs[1].start("w1", 30, now=T0), jobs[1].version)
    jobs.extend(store.create(job(T0 + i))[0] for i in range(2))
    now[0] += 1.0
    seen = [following.annotate(store.get(j.id)) for j in jobs]  # type: ignore[arg-type]
    assert len(listings) == 1  # not a catch-up that misses the cancel and the claim
    assert seen == [listing.annotate(store.get(j.id)) for j in jobs]  # type: ignore[arg-type]
    assert [s["queue"]["position"] if s["queue"] else None for s in seen] == [None, None, 1, 2, 3, 4]


def test_a_lane_is_planned_from_now_at_every_look_even_when_nothing_moved() -> None:
    store, now = MemoryJobStore(), [T0]
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 1, max_queue_wait_s: 600}\n")
    f = live.LiveForecaster(store, lanes, COSTS, 1, ttl_s=0.5, relist_s=60.0, clock=lambda: now[0])
    waiting = store.create(job(T0))[0]
    assert f.annotate(waiting)["queue"] == {"position": 1, "eta_start_s": 0.0, "eta_finish_s": 1.0}
    now[0] += 3.0  # nothing written for 3 s (no worker took it); then this process admits a job
    late = job(now[0])
    f.admit(late)
    store.create(late)
    # The idle worker is free now, not 3 s ago: the waiting job takes it first, then this one.
    assert f.annotate(late)["queue"] == {"position": 2, "eta_start_s": 1.0, "eta_finish_s": 2.0}


def test_jobs_past_the_limit_cost_no_read_when_the_log_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    store, now = MemoryJobStore(), [T0]
    lanes = lanes_mod.parse("lanes:\n  fast: {max_batch: 1}\n")
    f = live.LiveForecaster(store, lanes, COSTS, 1, ttl_s=0.5, limit=3, relist_s=60.0, clock=lambda: now[0])
    first = [store.create(job(T0 - 10 + i))[0] for i in range(3)]
    assert f.annotate(first[0])["queue"]["position"] == 1
    reads: list[str] = []
    get = store.get
    monkeypatch.setattr(store, "get", lambda job_id: reads.append(job_id) or get(job_id))
    later = [store.create(job(T0 + i))[0] for i in range(5)]  # a backlog past the limit
    now[0] += 1.0
    assert f.annotate(later[-1])["queue"] is None
    assert f.annotate(first[2])["queue"]["position"] == 3
    assert reads == []
