"""The informer's BOOKMARK path, against the fake API server with the real ``kubernetes`` client.

A watch with a label selector sees no events while only other objects change, so its
resourceVersion falls behind; once the server compacts its history, the next watch from that
version gets 410 Gone and the informer must list everything again. BOOKMARK events (asked for
with ``allowWatchBookmarks``) carry the current resourceVersion so the watch resumes from there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from difflane.controller.informer import Informer
from difflane.dispatch import kubernetes_spec as spec
from difflane.dispatch.kubernetes_api import KubeApi, connect
from tests.fakes.k8s_api import FakeKubernetes

pytestmark = pytest.mark.integration
pytest.importorskip("kubernetes")


def eventually(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    fake.start()
    yield fake
    fake.stop()


def _other_job(fake: FakeKubernetes, name: str) -> None:
    """A Job that is not ours: it moves the resourceVersion, but not our selector's events."""
    fake.create("jobs", "difflane", {"metadata": {"name": name, "labels": {"team": "other"}}, "spec": {}})


def _lists(fake: FakeKubernetes) -> int:
    return sum(1 for method, path in fake.requests if method == "GET" and "/jobs" in path and "watch=" not in path)


def _run(fake: FakeKubernetes, watch_s: int) -> tuple[Informer, threading.Thread, KubeApi]:
    api = KubeApi(connect(fake.url), "difflane", timeout=5)
    informer = Informer(
        "jobs",
        lambda: api.list_jobs(spec.SELECTOR),
        lambda rv: api.watch_jobs(spec.SELECTOR, rv, watch_s),
        lambda kind, obj: None,
    )
    thread = threading.Thread(target=informer.run, daemon=True)
    thread.start()
    eventually(informer.synced.is_set, "synced")
    eventually(lambda: any("watch=true" in p for _, p in fake.requests), "watching")
    return informer, thread, api


def _stop(informer: Informer, thread: threading.Thread, api: KubeApi) -> None:
    informer.stop()
    thread.join(timeout=10)
    api.close()
    assert not thread.is_alive()


def test_a_bookmark_keeps_the_watch_resumable_after_compaction(fake: FakeKubernetes) -> None:
    informer, thread, api = _run(fake, watch_s=30)
    try:
        for i in range(3):
            _other_job(fake, f"other-{i}")
        fake.compact()  # the version the informer listed at is gone from the history
        _other_job(fake, "other-3")
        fake.send_bookmarks()
        eventually(lambda: fake.bookmarks_sent >= 1, "a bookmark sent")
        time.sleep(0.2)  # let the informer read it (a wait, not a timing assertion)
        fake.break_watches()  # the connection drops: the informer watches again from the bookmark
        watches = sum(1 for _, p in fake.requests if "watch=true" in p)
        eventually(lambda: sum(1 for _, p in fake.requests if "watch=true" in p) > watches, "watching again")
        assert fake.expired_watches == 0  # resumed, no 410
        assert _lists(fake) == 1  # and no second list
    finally:
        _stop(informer, thread, api)


def test_the_server_sends_a_bookmark_before_the_watch_times_out(fake: FakeKubernetes) -> None:
    informer, thread, api = _run(fake, watch_s=1)
    try:
        _other_job(fake, "other-0")
        fake.compact()
        _other_job(fake, "other-1")
        # The watch ends at its timeout with a bookmark; the next watch starts from it.
        eventually(lambda: fake.bookmarks_sent >= 2, "bookmarks at two watch timeouts")
        assert fake.expired_watches == 0 and _lists(fake) == 1
    finally:
        _stop(informer, thread, api)


def test_a_version_behind_the_compaction_is_gone_and_a_bookmark_has_no_name(fake: FakeKubernetes) -> None:
    """The control: without a bookmark the watch's version falls behind and gets 410."""
    assert list(fake.watch("jobs", "difflane", spec.SELECTOR, "", 0.01)) == []  # no bookmark unasked
    since = fake.list("jobs", "difflane", spec.SELECTOR)["metadata"]["resourceVersion"]
    _other_job(fake, "other-0")
    fake.compact()
    _other_job(fake, "other-1")
    [gone] = list(fake.watch("jobs", "difflane", spec.SELECTOR, since, 0.01, bookmarks=True))
    assert gone["type"] == "ERROR" and gone["object"]["code"] == 410
    now = fake.list("jobs", "difflane", spec.SELECTOR)["metadata"]["resourceVersion"]
    [bookmark] = list(fake.watch("jobs", "difflane", spec.SELECTOR, now, 0.01, bookmarks=True))
    assert bookmark["type"] == "BOOKMARK" and "name" not in bookmark["object"]["metadata"]
    assert bookmark["object"]["metadata"]["resourceVersion"] == now
