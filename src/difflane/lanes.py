"""Lanes: named execution paths with their own queue, limits, batching and capacity class.

The lanes file is data (YAML) read by the API, the workers and the deployment alike:

    lanes:
      fast: {capacity: cpu, max_batch: 8, timeout_s: 60}
      long: {capacity: gpu, timeout_s: 3600, on_oom: long-80gb}

A lane's capacity class says where it runs: ``cpu``, ``gpu`` (a whole NVIDIA GPU) or a MIG
profile such as ``mig-1g.18gb``. The deployment turns it into node selectors and resource
requests; a worker refuses a lane whose class its device cannot meet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from difflane import yamlfile
from difflane.errors import ConfigError
from difflane.yamlfile import Entry

_CAPACITY = re.compile(r"^(cpu|gpu|mig-[1-9]g\.[0-9]+gb)$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")  # also a Kubernetes label value and a queue name part


class Lane(Entry):
    name: str
    capacity: str = "cpu"
    max_batch: Annotated[int, Field(ge=1, le=64)] = 1
    max_wait_ms: Annotated[int, Field(ge=0, le=10_000)] = 0
    timeout_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 600.0
    max_pixels: Annotated[int | None, Field(gt=0)] = None  # ceiling over every model of the lane
    max_steps: Annotated[int | None, Field(gt=0)] = None
    concurrency: Annotated[int, Field(ge=1, le=64)] = 1  # worker processes per node (deployment hint)
    max_attempts: Annotated[int | None, Field(ge=1, le=100)] = None  # default: DIFFLANE_MAX_ATTEMPTS
    on_oom: str | None = None  # move an out-of-memory job to this lane instead of failing it
    compile: bool = False  # torch.compile the UNet; compiled during warm-up, before ready
    warmup_batches: tuple[int, ...] = ()  # batch shapes to warm; default (1, max_batch)
    # Admission by prediction (difflane.capacity): a submit predicted to wait longer gets 429 queue_full.
    max_queue_wait_s: Annotated[float | None, Field(gt=0)] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("lane names are lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator("capacity")
    @classmethod
    def _capacity(cls, value: str) -> str:
        if not _CAPACITY.match(value):
            raise ValueError("capacity must be cpu, gpu or a MIG profile like mig-1g.18gb")
        return value

    @property
    def needs_gpu(self) -> bool:
        return self.capacity != "cpu"

    @property
    def mig_profile(self) -> str | None:
        return self.capacity.removeprefix("mig-") if self.capacity.startswith("mig-") else None

    def warmup_shapes(self) -> tuple[int, ...]:
        return self.warmup_batches or tuple(sorted({1, self.max_batch}))


class Lanes:
    def __init__(self, lanes: list[Lane]) -> None:
        self._lanes = {lane.name: lane for lane in lanes}
        for lane in lanes:
            if lane.on_oom is not None and lane.on_oom not in self._lanes:
                raise ConfigError(f"lane {lane.name!r}: on_oom names unknown lane {lane.on_oom!r}")
            if lane.on_oom == lane.name:
                raise ConfigError(f"lane {lane.name!r}: on_oom cannot name the lane itself")

    def get(self, name: str) -> Lane | None:
        return self._lanes.get(name)

    def __getitem__(self, name: str) -> Lane:
        return self._lanes[name]

    def names(self) -> list[str]:
        return list(self._lanes)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._lanes.values())


def builtin() -> Lanes:
    """Without a lanes file: the one lane the built-in catalog's tiny model uses."""
    # max_wait_ms 0: a lone job starts at once; under load the drain fills batches from the
    # queue (docs/architecture/0016-batching-drain.md has the measurements).
    return Lanes([Lane(name="fast", capacity="cpu", max_batch=8, max_wait_ms=0, timeout_s=120)])


def parse(text: str, origin: str = "<lanes>") -> Lanes:
    return Lanes(yamlfile.build(text, "lanes", origin, Lane))


def load(path: str | Path | None) -> Lanes:
    return builtin() if path is None else parse(*yamlfile.read(path))
