"""The batching benchmark's ceiling (bench/batching.py: the bare batch ratio) on a made-up clock."""

from __future__ import annotations

import pytest
from bench.batching import Bare, _rows, batch_ratio

from difflane import catalog
from difflane import lanes as lanes_mod
from difflane.worker.runtime import RenderedImage, RenderStats, RenderTask, StepCallback


class CostedRuntime:
    """Renders nothing; each call advances a clock by a fixed cost plus a cost per image."""

    device = "cpu"

    def __init__(self, per_call: float, per_image: float) -> None:
        self.per_call = per_call
        self.per_image = per_image
        self.now = 0.0
        self.calls: list[RenderTask] = []

    def clock(self) -> float:
        return self.now

    def load(self, model: object) -> float:
        return 0.0

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        self.calls.append(task)
        self.now += self.per_call + self.per_image * len(task.seeds)
        return []

    @property
    def last_stats(self) -> RenderStats | None:
        return None

    def close(self) -> None:
        pass


def bare(runtime: CostedRuntime) -> Bare:
    spec = catalog.builtin().get("tiny")
    assert spec is not None
    return Bare(runtime, spec, size=64, steps=4)


def test_the_ratio_is_n_single_calls_over_one_call_of_n() -> None:
    runtime = CostedRuntime(per_call=0.1, per_image=0.2)
    ratio = batch_ratio(bare(runtime), 8, 3, wall=runtime.clock, cpu=runtime.clock)
    # 8 calls of one: 8 * 0.3 s; one call of eight: 0.1 + 8 * 0.2 s.
    assert ratio["wall_ratio"] == ratio["cpu_ratio"] == pytest.approx(2.4 / 1.7, abs=1e-3)
    assert ratio["ms_per_image_alone"] == pytest.approx(300.0)
    assert ratio["ms_per_image_batched"] == pytest.approx(1700.0 / 8)


def test_each_round_puts_the_batched_call_between_the_two_halves_of_the_single_calls() -> None:
    runtime = CostedRuntime(per_call=0.0, per_image=1.0)
    batch_ratio(bare(runtime), 4, 2, wall=runtime.clock, cpu=runtime.clock)
    sizes = [len(task.seeds) for task in runtime.calls]
    assert sizes == [1, 4] + [1, 1, 4, 1, 1] * 2  # a warm-up of each shape first


def test_every_image_gets_its_own_seed_and_prompt_as_the_bursts_jobs_do() -> None:
    runtime = CostedRuntime(per_call=0.0, per_image=1.0)
    batch_ratio(bare(runtime), 8, 2, wall=runtime.clock, cpu=runtime.clock)
    seeds = [seed for task in runtime.calls for seed in task.seeds]
    prompts = [prompt for task in runtime.calls for prompt in task.prompts]
    assert len(set(seeds)) == len(seeds) and len(set(prompts)) == len(prompts)
    task = runtime.calls[-1]
    assert (task.width, task.height, task.steps) == (64, 64, 4)
    assert task.guidance_scale == 7.5 and set(task.negative_prompts) == {""}  # what the API fills in


def test_a_batched_setting_is_read_against_the_ceiling_and_the_reference_is_not() -> None:
    lane = lanes_mod.builtin()["fast"]
    latency = {"p50_ms": 100.0, "p99_ms": 120.0}
    bursts = [
        {"images_per_s": s, "mean_batch": 1.0, "busy_fraction": 0.97, "render_ms_per_image": 100.0}
        for s in (4.0, 6.0, 4.0)
    ]
    rows = _rows([(1, 0), (8, 0)], lane, [latency, latency], bursts, latency, {"wall_ratio": 2.0})
    assert [r["burst_vs_max_batch_1"] for r in rows] == [1.0, 1.5]
    assert [r["of_bare_batch_ratio"] for r in rows] == [None, 0.75]
