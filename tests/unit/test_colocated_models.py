"""`difflane serve` gives the model processes it starts beside the API a CPU share: torch
threads for the cores the API leaves, and a lower priority (settings.worker.model_threads,
model_nice); a worker on its own keeps torch's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from difflane import serve, wiring
from difflane.settings import Settings
from difflane.worker import main as worker_main


def test_two_cores_one_api_one_worker_leave_the_render_one_thread_at_lower_priority() -> None:
    chosen = serve.with_colocated_models(Settings(workers=1), cores=2)
    assert (chosen.worker.model_threads, chosen.worker.model_nice) == (1, serve.COLOCATED_MODEL_NICE)
    env = chosen.to_env()  # what the worker processes read
    assert env["DIFFLANE_MODEL_THREADS"] == "1" and env["DIFFLANE_MODEL_NICE"] == "10"


@pytest.mark.parametrize(
    ("cores", "api", "workers", "threads"), [(16, 1, 2, 7), (16, 4, 3, 4), (2, 2, 1, 1), (4, 1, 8, 1)]
)
def test_workers_share_the_cores_the_api_processes_leave(cores: int, api: int, workers: int, threads: int) -> None:
    chosen = serve.with_colocated_models(Settings(workers=workers, api_workers=api), cores=cores)
    assert chosen.worker.model_threads == threads


def test_explicit_values_are_kept_and_an_api_alone_is_left_as_it_is() -> None:
    chosen = serve.with_colocated_models(Settings(workers=1, model_threads=2, model_nice=0), cores=2)
    assert (chosen.worker.model_threads, chosen.worker.model_nice) == (2, 0)
    alone = serve.with_colocated_models(Settings(workers=0), cores=2)
    assert (alone.worker.model_threads, alone.worker.model_nice) == (None, None)
    assert "DIFFLANE_MODEL_THREADS" not in alone.to_env()


def test_the_worker_hands_its_share_to_the_model_process_it_starts(tmp_path: Path) -> None:
    s = Settings(workers=1, model_threads=3, model_nice=7, data_dir=tmp_path)
    parts = wiring.build(s)
    try:
        runtime = worker_main.isolated_runtime(s, parts, ["fast"])
        assert (runtime.config.threads, runtime.config.nice) == (3, 7)
        unset = worker_main.isolated_runtime(Settings(data_dir=tmp_path), parts, ["fast"])
        assert (unset.config.threads, unset.config.nice) == (None, 0)  # torch's defaults
    finally:
        parts.close()
