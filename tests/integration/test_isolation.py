"""The model process: timeouts kill it, out-of-memory and crashes are classified, steps and
cancels cross the boundary. Uses the fake runtime in a real child process (no torch needed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from difflane import catalog
from difflane.worker.isolation import IsolatedRuntime
from difflane.worker.model_messages import RuntimeConfig
from difflane.worker.runtime import Interrupted, OutOfMemory, RenderTask, RenderTimeout, RuntimeCrashed

pytestmark = pytest.mark.integration
SPEC = catalog.builtin().get("tiny")


def task(prompt: str = "a fox", steps: int = 4, images: int = 1) -> RenderTask:
    assert SPEC is not None
    return RenderTask(SPEC, (prompt,) * images, ("",) * images, tuple(range(images)), 64, 64, steps, 7.5)


@pytest.fixture
def runtime(tmp_path) -> Iterator[IsolatedRuntime]:  # type: ignore[no-untyped-def]
    rt = IsolatedRuntime(RuntimeConfig(kind="fake", hf_home=str(tmp_path), fake_step_seconds=0.005))
    rt.start()
    yield rt
    rt.close()


def test_steps_cross_the_boundary_and_images_come_back(runtime: IsolatedRuntime) -> None:
    seen: list[tuple[int, int]] = []
    images = runtime.render(task(images=3), lambda s, t: seen.append((s, t)) or True, timeout=30)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(images) == 3 and len(images[0].rgb) == 64 * 64 * 3
    assert runtime.last_stats is not None and runtime.device == "cpu"
    assert runtime.pid is not None


def test_cancel_stops_at_the_step_it_is_asked(runtime: IsolatedRuntime) -> None:
    seen: list[int] = []

    def on_step(step: int, total: int) -> bool:
        seen.append(step)
        return step < 3

    with pytest.raises(Interrupted):
        runtime.render(task(steps=50), on_step, timeout=30)
    assert seen == [1, 2, 3]


def test_a_hung_render_is_killed_at_its_timeout_and_a_new_process_serves(runtime: IsolatedRuntime) -> None:
    runtime.load(SPEC)  # type: ignore[arg-type]
    before = runtime.pid
    with pytest.raises(RenderTimeout):
        runtime.render(task("[hang]"), lambda s, t: True, timeout=1.0)
    assert len(runtime.render(task(), lambda s, t: True, timeout=30)) == 1
    assert runtime.pid != before and runtime.restarts == 1


def test_out_of_memory_is_classified_and_the_process_goes_on(runtime: IsolatedRuntime) -> None:
    before = runtime.pid
    with pytest.raises(OutOfMemory):
        runtime.render(task("[oom]"), lambda s, t: True, timeout=30)
    assert len(runtime.render(task(), lambda s, t: True, timeout=30)) == 1
    assert runtime.pid == before  # no restart needed


def test_a_crashed_process_is_reported_and_replaced(runtime: IsolatedRuntime) -> None:
    with pytest.raises(RuntimeCrashed):
        runtime.render(task("[crash]"), lambda s, t: True, timeout=30)
    assert len(runtime.render(task(), lambda s, t: True, timeout=30)) == 1
    assert runtime.restarts == 1


def test_the_model_process_lowers_its_priority_as_configured(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    rt = IsolatedRuntime(RuntimeConfig(kind="fake", hf_home=str(tmp_path), nice=5))
    rt.start()
    try:
        assert rt.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, rt.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 5
    finally:
        rt.close()


def test_the_model_process_sets_torchs_threads_where_it_renders(tiny_hf_home) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from difflane.worker import child

    before = torch.get_num_threads()
    try:
        runtime = child.build_runtime(
            RuntimeConfig(kind="diffusers", hf_home=str(tiny_hf_home), device="cpu", threads=1)
        )
        runtime.close()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_loading_the_model_the_process_used_last_costs_no_round_trip(
    runtime: IsolatedRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.load(SPEC)  # type: ignore[arg-type]
    sent: list[object] = []
    real = runtime._request
    monkeypatch.setattr(runtime, "_request", lambda message, timeout: sent.append(message) or real(message, timeout))
    assert runtime.load(SPEC) == 0.0  # type: ignore[arg-type]
    runtime.render(task(), lambda s, t: True, timeout=30)
    assert runtime.load(SPEC) == 0.0  # type: ignore[arg-type]
    assert sent == []
    with pytest.raises(RenderTimeout):  # a new process has nothing loaded: the next load asks
        runtime.render(task("[hang]"), lambda s, t: True, timeout=1.0)
    runtime.load(SPEC)  # type: ignore[arg-type]
    assert len(sent) == 1
