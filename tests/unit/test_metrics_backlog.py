"""/metrics reads queue depth from a background refresher: scrapes never call the dispatcher
(issue 9: each scrape called Service Bus management, or listed Jobs, once per lane)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api.app import create_app
from difflane.api.backlog import BacklogRefresher
from difflane.settings import Settings


class CountingBacklog:
    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def __call__(self, lane: str) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionError("management endpoint down")
        return 7


def test_scrapes_read_the_last_refresh_and_never_call_the_dispatcher() -> None:
    settings = Settings(store="memory", dispatch="memory", metrics_backlog_refresh_seconds=3600)
    parts = wiring.build(settings)
    counting = CountingBacklog()
    parts.dispatcher.backlog = counting  # type: ignore[method-assign]
    with TestClient(create_app(settings, components=parts)) as client:
        refresher: BacklogRefresher = client.app.state.backlog  # type: ignore[attr-defined]
        refresher.refresh()  # whatever the timer did by now, one more round
        before = counting.calls
        for _ in range(20):
            text = client.get("/metrics").text
        assert 'difflane_queue_depth{lane="fast"} 7.0' in text
        assert counting.calls == before  # twenty scrapes, no backlog call
        refresher.refresh()
        assert counting.calls == before + len(parts.catalog.lanes())  # one call per lane per round


def test_a_lane_whose_queue_is_down_drops_out_instead_of_failing_the_scrape() -> None:
    counting = CountingBacklog()
    refresher = BacklogRefresher(lambda: ["fast", "long"], counting, interval_seconds=3600)
    refresher.refresh()
    assert [s.value for m in refresher.collect() for s in m.samples] == [7, 7]
    counting.down = True
    refresher.refresh()
    assert [m.samples for m in refresher.collect()] == [[]]
