"""plan.Plan, the forecast that takes jobs at its tail, gives exactly plan.forecast's ETAs.

Random backlogs (a few batch keys, 1-3 images, workers busy or free) are planned whole by
``forecast`` and, the same items, appended to a ``Plan`` one at a time or in runs: every ETA
must be equal, and ``what_if`` must answer what an append would give without changing the plan.
"""

from __future__ import annotations

import random

import pytest

from difflane.capacity import plan, policy

KEYS = [("fast", "tiny", 64, 64, 4), ("fast", "tiny", 64, 64, 8), ("fast", "tiny", 128, 64, 4)]


def cost(model: str, images: int, steps: int, width: int, height: int) -> float:
    # Irregular on purpose: batch sizes cost unlike amounts, so a wrong batch shows in its finish.
    return 0.05 + 0.013 * steps * images**0.8 * (width * height) / 4096


def backlog(rng: random.Random, n: int) -> list[policy.Item]:
    items = []
    for ref in range(n):
        key = rng.choice(KEYS[: rng.choice([1, 3])]) if ref else KEYS[0]
        images = rng.choice([1, 1, 1, 2, 3])
        items.append(policy.Item(ref, key, "tiny", key[2], key[3], key[4], images, float(ref)))
    return items


def workers(rng: random.Random, now: float) -> list[float]:
    return [rng.choice([now, now + rng.uniform(0, 2)]) for _ in range(rng.choice([1, 1, 2, 3]))]


LANES = [(1, 0.0), (1, 0.02), (8, 0.0), (8, 0.02)]  # (max_batch, max_wait_s)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("max_batch", "max_wait_s"), LANES)
@pytest.mark.parametrize("max_held", [1, policy.MAX_HELD])
def test_appending_gives_the_full_replans_etas(seed: int, max_batch: int, max_wait_s: float, max_held: int) -> None:
    rng = random.Random(seed)
    now = 100.0
    free_at = workers(rng, now)
    items = backlog(rng, rng.randint(1, 60))
    rules = plan.LaneRules(max_batch, max_wait_s, cost, max_held)
    incremental = plan.Plan(free_at, now, rules)
    done = 0
    while done < len(items):
        run = items[done : done + rng.choice([1, 1, 1, 2, 5])]
        nxt = run[0]
        assert incremental.what_if(nxt) == plan.forecast(items[: done + 1], free_at, now, max_batch=max_batch,
                                                           max_wait_s=max_wait_s, cost=cost,
                                                           max_held=max_held)[nxt.ref]  # fmt: skip
        incremental.extend(run)
        done += len(run)
        full = plan.forecast(items[:done], free_at, now, max_batch=max_batch, max_wait_s=max_wait_s, cost=cost,
                             max_held=max_held)  # fmt: skip
        assert incremental.etas == full


def test_what_if_leaves_the_plan_as_it_was() -> None:
    rng = random.Random(7)
    items = backlog(rng, 30)
    p = plan.Plan([0.0, 0.5], 0.0, plan.LaneRules(8, 0.02, cost))
    p.extend(items[:29])
    before = dict(p.etas)
    p.what_if(items[29])
    assert p.etas == before
    p.extend(items[29:])
    assert p.etas == plan.forecast(items, [0.0, 0.5], 0.0, max_batch=8, max_wait_s=0.02, cost=cost)


def test_a_newcomer_can_fill_the_open_batch_and_start_it_sooner() -> None:
    # One worker, max_batch 2, a 0.1 s wait for company: a lone job waits, its partner starts it at once.
    k = KEYS[0]
    items = [policy.Item(i, k, "tiny", 64, 64, 4, 1, 0.0) for i in range(2)]
    p = plan.Plan([0.0], 0.0, plan.LaneRules(2, 0.1, cost))
    p.extend(items[:1])
    assert p.etas[0].start == 0.1
    p.extend(items[1:])
    assert p.etas[0].start == p.etas[1].start == 0.0


@pytest.mark.parametrize(("max_batch", "max_wait_s"), LANES)
def test_an_append_replays_a_few_batches_not_the_queue(
    max_batch: int, max_wait_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = backlog(random.Random(3), 501)
    p = plan.Plan([0.0, 1.0], 0.0, plan.LaneRules(max_batch, max_wait_s, cost))
    p.extend(items[:500])
    steps = 0
    step = plan._Run.step

    def counted(run: plan._Run, rules: plan.LaneRules) -> list[tuple[int, plan.Eta]]:
        nonlocal steps
        steps += 1
        return step(run, rules)

    monkeypatch.setattr(plan._Run, "step", counted)
    p.extend(items[500:])
    # The batch that reached the queue's end, then what the two workers hold (at most 4 each).
    assert steps <= 2 + 2 * policy.MAX_HELD
