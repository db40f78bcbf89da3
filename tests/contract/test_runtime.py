"""The Runtime contract, against every implementation: the fake, the real Diffusers runtime on
the tiny pipeline, and the isolated runtime (a model process) around the fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane import catalog
from difflane.worker.runtime import Interrupted, RenderTask, Runtime

SPEC = catalog.builtin().get("tiny")


@pytest.fixture(params=["fake", "diffusers", "isolated"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    rt: Runtime
    if request.param == "fake":
        from difflane.testing import FakeRuntime

        rt = FakeRuntime()
    elif request.param == "diffusers":
        from difflane.worker.diffusers_runtime import DiffusersRuntime

        rt = DiffusersRuntime(request.getfixturevalue("tiny_hf_home"), device="cpu")
    else:
        from difflane.worker.isolation import IsolatedRuntime
        from difflane.worker.model_messages import RuntimeConfig

        rt = IsolatedRuntime(RuntimeConfig(kind="fake", hf_home=str(tmp_path)))
    yield rt
    rt.close()


def task(seeds: tuple[int, ...] = (1,), steps: int = 3, prompt: str = "a red fox") -> RenderTask:
    assert SPEC is not None
    n = len(seeds)
    return RenderTask(SPEC, (prompt,) * n, ("",) * n, seeds, 64, 32, steps, 7.5)


def test_renders_one_image_per_seed_at_the_asked_size(runtime: Runtime) -> None:
    images = runtime.render(task(seeds=(1, 2)), lambda s, t: True)
    assert len(images) == 2
    for image in images:
        assert (image.width, image.height) == (64, 32) and len(image.rgb) == 64 * 32 * 3
    assert runtime.last_stats is not None and runtime.last_stats.seconds > 0


def test_same_task_same_pixels_other_seed_other_pixels(runtime: Runtime) -> None:
    a = runtime.render(task(seeds=(5,)), lambda s, t: True)[0]
    b = runtime.render(task(seeds=(5,)), lambda s, t: True)[0]
    c = runtime.render(task(seeds=(6,)), lambda s, t: True)[0]
    assert a.rgb == b.rgb and a.rgb != c.rgb


def test_reports_every_step(runtime: Runtime) -> None:
    seen: list[tuple[int, int]] = []
    runtime.render(task(steps=3), lambda s, t: seen.append((s, t)) or True)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_stops_when_the_callback_says_so(runtime: Runtime) -> None:
    seen: list[int] = []
    with pytest.raises(Interrupted):
        runtime.render(task(steps=10), lambda s, t: seen.append(s) or s < 2)
    assert seen == [1, 2]


def test_load_is_cached(runtime: Runtime) -> None:
    assert SPEC is not None
    runtime.load(SPEC)
    assert runtime.load(SPEC) == 0.0
