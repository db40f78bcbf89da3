"""Fixtures shared by every test layer."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from difflane.jobs import GenerationRequest, Job, Principal, new_job

ALICE = Principal("contoso", "alice")
BOB = Principal("contoso", "bob")
MALLORY = Principal("fabrikam", "alice")  # same subject id, other tenant


def make_request(**changes: object) -> GenerationRequest:
    fields: dict[str, object] = dict(
        model="tiny",
        prompt="a red fox",
        negative_prompt="",
        width=64,
        height=64,
        steps=4,
        guidance_scale=7.5,
        seed=42,
        num_images=1,
    )
    fields.update(changes)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def make_job(owner: Principal = ALICE, lane: str = "fast", **changes: object) -> Job:
    return new_job(owner, make_request(**changes), lane)


@pytest.fixture(scope="session")
def tiny_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face home holding the tiny model, built once per test session."""
    pytest.importorskip("diffusers")
    from difflane.worker.tiny_model import create_tiny

    home = tmp_path_factory.mktemp("hf")
    create_tiny(home)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_sse(lines: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events stream."""
    out: list[tuple[str, dict[str, Any]]] = []
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            out.append((event, json.loads(line[6:])))
    return out


@pytest.fixture
def spans() -> Iterator[Any]:
    """Every span the platform ends, kept in memory: tracing on for this test only."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from difflane.telemetry import tracing

    exporter = InMemorySpanExporter()
    assert tracing.setup("difflane-test", env={}, span_exporter=exporter)
    yield exporter
    tracing.shutdown()
