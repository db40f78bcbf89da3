"""The job record's legal moves and its ids."""

from __future__ import annotations

import time
import uuid

import pytest

from difflane.errors import IllegalTransition
from difflane.jobs import ErrorCode, JobState, Principal, is_job_id, new_id
from tests.conftest import make_job


def test_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and is_job_id(i) for i in ids[:10])
    older = new_id(time.time() - 60)
    assert is_job_id(older)


@pytest.mark.parametrize("text", ["", "nope", str(uuid.uuid4()), "01900000-0000-7000-8000-00000000000G"])
def test_is_job_id_rejects_others(text: str) -> None:
    assert not is_job_id(text)


def test_happy_path() -> None:
    job = make_job(steps=2)
    running = job.start("w1", 30, now=100.0)
    assert running.state is JobState.RUNNING and running.attempts == 1 and running.lease is not None
    assert running.lease.expires_at == 130.0
    stepped = running.advance("w1", 1, 2)
    done = stepped.succeed("w1", ())
    assert done.state is JobState.SUCCEEDED and done.progress.step == 2 and done.lease is None and done.finished_at


def test_only_the_lease_holder_may_advance_or_succeed() -> None:
    running = make_job().start("w1", 30)
    with pytest.raises(IllegalTransition):
        running.advance("w2", 1, 4)
    with pytest.raises(IllegalTransition):
        running.succeed("w2", ())


def test_start_takes_over_an_expired_lease_only() -> None:
    running = make_job().start("w1", 30, now=100.0)
    with pytest.raises(IllegalTransition):
        running.start("w2", 30, now=120.0)
    taken = running.start("w2", 30, now=131.0)
    assert taken.lease is not None and taken.lease.owner == "w2" and taken.attempts == 2


@pytest.mark.parametrize("final", ["succeed", "fail", "cancel"])
def test_terminal_states_are_final(final: str) -> None:
    running = make_job().start("w1", 30)
    if final == "succeed":
        done = running.succeed("w1", ())
    elif final == "fail":
        done = running.fail(ErrorCode.INTERNAL, "boom")
    else:
        done = running.cancel().acknowledge_cancel()
    for move in (
        lambda j: j.start("w9", 30),
        lambda j: j.cancel(),
        lambda j: j.fail(ErrorCode.OOM, "x"),
        lambda j: j.requeue(),
        lambda j: j.advance("w1", 1, 4),
    ):
        with pytest.raises(IllegalTransition):
            move(done)


def test_cancel_of_queued_is_immediate_and_of_running_is_a_request() -> None:
    queued = make_job()
    assert queued.cancel().state is JobState.CANCELLED
    running = queued.start("w1", 30)
    asked = running.cancel()
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    with pytest.raises(IllegalTransition):
        asked.succeed("w1", ())  # a cancelled job never gains outputs
    assert asked.acknowledge_cancel().state is JobState.CANCELLED
    with pytest.raises(IllegalTransition):
        asked.start("w2", 30, now=time.time() + 3600)


def test_requeue_gives_back() -> None:
    running = make_job().start("w1", 30)
    back = running.requeue("w1")
    assert back.state is JobState.QUEUED and back.lease is None and back.attempts == 1
    with pytest.raises(IllegalTransition):
        running.requeue("w2")


def test_seeds_per_image_and_principal_key() -> None:
    job = make_job(seed=2**53 - 1, num_images=3)
    assert job.request.seeds() == (2**53 - 1, 0, 1)
    assert Principal.from_key(Principal("t", "s").key) == Principal("t", "s")


@pytest.mark.parametrize("tenant", ["", "a/b"])
def test_a_tenant_cannot_make_keys_ambiguous(tenant: str) -> None:
    with pytest.raises(ValueError):
        Principal(tenant, "c")
    assert Principal("a", "b/c").key == "a/b/c" and Principal.from_key("a/b/c") == Principal("a", "b/c")
