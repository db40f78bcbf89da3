"""The workers the live forecast counts, per lane: configured pools (DIFFLANE_FORECAST_WORKERS,
one number or lane=N), the embedded shape's heartbeats, and running batches that occupy the
worker holding them. A memory store and a fixed clock, as in test_capacity_live.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from difflane import lanes as lanes_mod
from difflane.capacity import costs, live
from difflane.errors import ConfigError, TooManyRequests
from difflane.jobs import GenerationRequest, Job, Principal, new_job
from difflane.settings import Settings, load
from difflane.testing import MemoryJobStore
from difflane.worker import assembly, heartbeat
from difflane.worker.heartbeat import Beat, WorkerState

T0 = 1_000_000.0
# tiny at 64x64, 4 steps: 1 s per image.
COSTS = costs.CostModel(
    models={"tiny": costs.ModelCost(reference=costs.Size(width=64, height=64), seconds_per_step_per_image={1: 0.25})}
)
LANES = lanes_mod.parse(
    "lanes:\n"
    "  fast: {max_batch: 1, max_queue_wait_s: 1.5}\n"
    "  long: {max_batch: 1, max_queue_wait_s: 1.5}\n"
    "  idle: {max_batch: 1}\n"
)
OWNER = Principal("t", "s")


def job(lane: str, at: float) -> Job:
    return new_job(OWNER, GenerationRequest("tiny", "p", "", 64, 64, 4, 7.5, 1, 1), lane, now=at)


def queued(store: MemoryJobStore, lane: str, n: int) -> list[Job]:
    return [store.create(job(lane, T0 - 10 + i * 0.01))[0] for i in range(n)]


def running(store: MemoryJobStore, lane: str, owner: str, started: float = T0 - 0.25) -> Job:
    """A job of ``lane`` that ``owner`` started at ``started``: it should end 1 s later."""
    j = store.create(job(lane, T0 - 20))[0]
    return store.update(j.start(owner, 30, now=started), j.version)


def starts(f: live.LiveForecaster, jobs: list[Job]) -> list[float | None]:
    out = []
    for j in jobs:
        q = f.annotate(j)["queue"]
        out.append(None if q is None else q["eta_start_s"])
    return out


def forecaster(store: MemoryJobStore, pool: live.Pool | int, *, ttl_s: float = 0.0) -> live.LiveForecaster:
    return live.LiveForecaster(store, LANES, COSTS, pool, ttl_s=ttl_s, clock=lambda: T0)


def beat(
    data_dir: Path,
    pid: int,
    lanes: tuple[str, ...],
    *,
    state: WorkerState = WorkerState.READY,
    at: float = T0,
    host: str = "node-a",
) -> str:
    """Write a worker's heartbeat file as the worker does; its lease owner prefix (``host-pid``)."""
    path = heartbeat.path_for(data_dir, pid, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(Beat(host, pid, state, lanes, T0 - 60, T0 - 50, at).to_json())
    return f"{host}-{pid}"


# --- configured pools ------------------------------------------------------------------------------


def test_two_lanes_with_different_pools_get_different_etas() -> None:
    store = MemoryJobStore()
    fast, long = queued(store, "fast", 2), queued(store, "long", 2)
    f = forecaster(store, live.FixedPool.per_lane({"fast": 2, "long": 1}))
    assert starts(f, fast) == [0.0, 0.0]  # one worker each
    assert starts(f, long) == [0.0, 1.0]  # one worker, one job after the other


def test_a_lane_with_no_worker_gets_no_eta_and_is_never_refused_by_prediction() -> None:
    store = MemoryJobStore()
    waiting = queued(store, "long", 3)
    f = forecaster(store, live.FixedPool.per_lane({"fast": 1, "long": 0}))
    assert [f.annotate(j) for j in waiting] == [{"queue": None, "eta_finish_s": None}] * 3
    f.admit(job("long", T0))  # 3 waiting, max_queue_wait_s 1.5: refused if it had a worker
    with pytest.raises(TooManyRequests, match="is full"):
        forecaster(store, live.FixedPool.per_lane({"long": 1})).admit(job("long", T0))


def test_a_configured_pool_serving_some_lanes_takes_their_running_batches_only() -> None:
    store = MemoryJobStore()
    running(store, "long", "elsewhere-1-abcdef")  # a long batch: no fast worker holds it
    fast = queued(store, "fast", 1)
    f = forecaster(store, live.FixedPool.serving(1, ["fast"]))
    assert starts(f, fast) == [0.0]
    assert starts(forecaster(store, 1), fast) == [0.75]  # one worker for every lane: it holds it


# --- heartbeats ------------------------------------------------------------------------------------


def test_only_fresh_starting_or_ready_workers_serve(tmp_path: Path) -> None:
    store = MemoryJobStore()
    waiting = queued(store, "fast", 4)
    beat(tmp_path, 1, ("fast",))
    beat(tmp_path, 2, ("fast",), state=WorkerState.STARTING)
    beat(tmp_path, 3, ("fast",), at=T0 - heartbeat.STALE_S - 1)  # silent: died or hangs
    beat(tmp_path, 4, ("fast",), state=WorkerState.STOPPING)  # takes no more work
    f = forecaster(store, live.HeartbeatPool(tmp_path, live.FixedPool.serving(9)))
    assert starts(f, waiting) == [0.0, 0.0, 1.0, 1.0]  # two workers


def test_without_a_fresh_heartbeat_the_configured_workers_serve(tmp_path: Path) -> None:
    store = MemoryJobStore()
    waiting = queued(store, "fast", 3)
    pool = live.HeartbeatPool(tmp_path, live.FixedPool.serving(3))
    assert starts(forecaster(store, pool), waiting) == [0.0, 0.0, 0.0]  # no folder yet
    beat(tmp_path, 1, ("fast",), at=T0 - heartbeat.STALE_S - 1)
    assert starts(forecaster(store, pool), waiting) == [0.0, 0.0, 0.0]  # only a stale one
    beat(tmp_path, 2, ("fast",))
    assert starts(forecaster(store, pool), waiting) == [0.0, 1.0, 2.0]  # one has beaten: it alone


def test_all_fresh_workers_stopping_gives_no_eta(tmp_path: Path) -> None:
    store = MemoryJobStore()
    waiting = queued(store, "fast", 1)
    beat(tmp_path, 1, ("fast",), state=WorkerState.STOPPING)
    f = forecaster(store, live.HeartbeatPool(tmp_path, live.FixedPool.serving(2)))
    assert f.annotate(waiting[0])["queue"] is None


def test_a_running_batch_occupies_only_the_worker_holding_it_and_its_lanes(tmp_path: Path) -> None:
    store = MemoryJobStore()
    a = beat(tmp_path, 1, ("fast",))
    beat(tmp_path, 2, ("long",))
    running(store, "fast", f"{a}-abc123")  # ends at T0 + 0.75
    fast, long = queued(store, "fast", 1), queued(store, "long", 1)
    f = forecaster(store, live.HeartbeatPool(tmp_path, live.FixedPool.serving(1)))
    assert starts(f, fast) == [0.75]
    assert starts(f, long) == [0.0]  # the long worker is idle, whatever fast's worker does


def test_a_worker_serving_two_lanes_is_busy_for_both(tmp_path: Path) -> None:
    store = MemoryJobStore()
    both = beat(tmp_path, 1, ("fast", "long"))
    beat(tmp_path, 2, ("idle",))
    running(store, "fast", f"{both}-abc123")
    fast, long, idle = queued(store, "fast", 1), queued(store, "long", 1), queued(store, "idle", 1)
    f = forecaster(store, live.HeartbeatPool(tmp_path, live.FixedPool.serving(1)))
    assert starts(f, fast) == [0.75] and starts(f, long) == [0.75] and starts(f, idle) == [0.0]


def test_a_batch_of_a_silent_worker_occupies_nobody(tmp_path: Path) -> None:
    store = MemoryJobStore()
    gone = beat(tmp_path, 1, ("fast",), at=T0 - heartbeat.STALE_S - 1)
    beat(tmp_path, 2, ("fast",))
    running(store, "fast", f"{gone}-abc123")
    waiting = queued(store, "fast", 1)
    assert starts(forecaster(store, live.HeartbeatPool(tmp_path, live.FixedPool.serving(1))), waiting) == [0.0]


def test_the_lease_owner_of_a_worker_names_its_heartbeat(tmp_path: Path) -> None:
    # The two names are made in different modules (worker/assembly.py, worker/heartbeat.py).
    store = MemoryJobStore()
    beat(tmp_path, os.getpid(), ("fast",), host=socket.gethostname())
    running(store, "fast", assembly.new_worker_id())
    waiting = queued(store, "fast", 1)
    assert starts(forecaster(store, live.HeartbeatPool(tmp_path, live.FixedPool.serving(1))), waiting) == [0.75]
    assert live.worker_of("aks-gpu-0-1234-a1b2c3") == "aks-gpu-0-1234"  # dashes in the host name


def test_heartbeats_are_read_once_per_look_not_per_request(tmp_path: Path) -> None:
    store, now = MemoryJobStore(), [T0]
    waiting = queued(store, "fast", 3)
    reads: list[Path] = []

    def read(data_dir: Path) -> list[Beat]:
        reads.append(data_dir)
        return heartbeat.read_all(data_dir)

    pool = live.HeartbeatPool(tmp_path, live.FixedPool.serving(1), read=read)
    f = live.LiveForecaster(store, LANES, COSTS, pool, ttl_s=0.5, relist_s=60.0, clock=lambda: now[0])
    for j in waiting * 10:
        f.annotate(j)
    f.admit(job("long", T0))
    assert len(reads) == 1
    now[0] += 0.5
    f.annotate(waiting[0])
    assert len(reads) == 2


# --- settings --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_difflane_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DIFFLANE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("value", "number", "per_lane"),
    [
        ("4", 4, None),
        (" 0 ", 0, None),
        ("fast=2,long=1", ["fast=2", "long=1"], {"fast": 2, "long": 1}),
        (" fast = 2 , long=0 ", ["fast=2", "long=0"], {"fast": 2, "long": 0}),
    ],
)
def test_forecast_workers_is_a_number_or_lane_counts(
    monkeypatch: pytest.MonkeyPatch, value: str, number: object, per_lane: dict[str, int] | None
) -> None:
    monkeypatch.setenv("DIFFLANE_FORECAST_WORKERS", value)
    s = load()
    assert s.capacity.forecast_workers == number and s.capacity.forecast_lane_workers == per_lane
    monkeypatch.setenv("DIFFLANE_FORECAST_WORKERS", s.to_env()["DIFFLANE_FORECAST_WORKERS"])
    assert load().capacity == s.capacity  # what `serve` hands its API processes reads the same


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("many", "is not a number of workers"),
        ("-1", "is not a number of workers"),
        ("1025", "from 0 to 1024"),
        ("", "is not a number of workers"),
        ("fast", "is not a number of workers"),
        ("fast=", "'fast=' is not lane=N"),
        ("fast=two", "'fast=two' is not lane=N"),
        ("=2", "'=2' is not lane=N"),
        ("fast=2,3", "'3' is not lane=N"),
        ("fast=1=2", "'fast=1=2' is not lane=N"),
        ("fast=1,fast=2", "lane 'fast' is named twice"),
        ("fast=²", "is not lane=N"),
    ],
)
def test_a_bad_forecast_workers_is_a_settings_error(monkeypatch: pytest.MonkeyPatch, value: str, says: str) -> None:
    monkeypatch.setenv("DIFFLANE_FORECAST_WORKERS", value)
    with pytest.raises(ConfigError, match="DIFFLANE_FORECAST_WORKERS") as caught:
        load()
    assert says in str(caught.value)


def test_the_pool_follows_the_settings(tmp_path: Path) -> None:
    def pool(**values: object) -> live.Pool | None:
        return live.pool_of(Settings(data_dir=tmp_path, **values), LANES)

    per_lane = pool(forecast_workers="fast=2,long=0")
    assert isinstance(per_lane, live.FixedPool)
    assert [w.lanes for w in per_lane.fixed] == [frozenset({"fast"})] * 2
    number = pool(forecast_workers=3)  # the operator's word, even beside the embedded queue
    assert isinstance(number, live.FixedPool) and [w.lanes for w in number.fixed] == [None] * 3
    embedded = pool(workers=2, worker_lanes="fast,long")
    assert isinstance(embedded, live.HeartbeatPool) and embedded.data_dir == tmp_path
    assert [w.lanes for w in embedded.fallback.fixed] == [frozenset({"fast", "long"})] * 2
    memory = pool(store="memory", workers=1)  # no worker process beats beside a memory store
    assert isinstance(memory, live.FixedPool) and [w.lanes for w in memory.fixed] == [None]
    assert pool(forecast_workers=0) is None and pool(workers=0) is None
    assert pool(forecast_workers="fast=0") is None  # no worker anywhere: the forecast is off


def test_a_lane_count_for_a_lane_the_lanes_file_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown lane.*fsat; the lanes file defines fast, long, idle"):
        live.pool_of(Settings(data_dir=tmp_path, forecast_workers="fast=1,fsat=2"), LANES)
    assert live.from_settings(Settings(store="memory", forecast_workers="fast=1"), MemoryJobStore(), LANES)
