"""Several models per worker: an LRU of pipelines bounded by a memory budget (real tiny pipeline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from difflane import catalog

pytestmark = pytest.mark.integration


def test_least_recently_used_models_are_evicted_beyond_the_budget(tiny_hf_home: Path) -> None:
    from difflane.worker.diffusers_runtime import DiffusersRuntime

    tiny = catalog.builtin().get("tiny")
    assert tiny is not None
    a, b, c = (tiny.model_copy(update={"name": n}) for n in ("a", "b", "c"))
    probe = DiffusersRuntime(tiny_hf_home, device="cpu")
    probe.load(a)
    one_model = probe._pipelines["a"].bytes  # the size the budget counts
    probe.close()
    assert one_model > 1_000_000

    runtime = DiffusersRuntime(tiny_hf_home, device="cpu", memory_budget_bytes=int(one_model * 2.5))
    runtime.load(a)
    runtime.load(b)
    assert runtime.loaded_models() == ["a", "b"]
    assert runtime.load(a) == 0.0  # cached; now the most recently used
    assert runtime.loaded_models() == ["b", "a"]
    runtime.load(c)  # three do not fit: the least recently used (b) goes
    assert runtime.loaded_models() == ["a", "c"]
    assert runtime.load(b) > 0.0  # loaded again
    runtime.close()


def test_without_a_budget_every_model_stays(tiny_hf_home: Path) -> None:
    from difflane.worker.diffusers_runtime import DiffusersRuntime

    tiny = catalog.builtin().get("tiny")
    assert tiny is not None
    runtime = DiffusersRuntime(tiny_hf_home, device="cpu")
    for name in ("a", "b", "c"):
        runtime.load(tiny.model_copy(update={"name": name}))
    assert runtime.loaded_models() == ["a", "b", "c"]
    runtime.close()
